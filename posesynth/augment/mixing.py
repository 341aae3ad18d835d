"""Batch mixing: part of each training batch replaced by renders of perturbed poses, labelled
from the perturbed keypoints, and the same random resize and translation for every condition.

:class:`BatchMixer` is the pose trainer's ``batch_transform`` (built by :mod:`~posesynth.augment.training`).  For each batch (on the training
device) and step ``s``:

1. it chooses the slots to replace (generator ``(seed, s, 1)``): ``fraction x batch`` of them
   in expectation (``floor`` plus a Bernoulli draw on the remainder);
2. it fills them (``fill``):

   - ``render``: the slots' keypoints are perturbed (:class:`~posesynth.augment.perturb.Perturber`,
     generator ``(seed, s, 3)``), a :class:`~posesynth.augment.renderers.Renderer` draws the
     images, and every label is regenerated from the perturbed keypoints: heatmaps and PAFs
     (batched in torch on the training device), masks from the renderer;
   - ``real-dup`` (the control): other real training samples, drawn with generator
     ``(seed, s, 4)`` and augmented like the rest, so a gain can be told apart from a change of
     batch composition;
   - ``none``: nothing is replaced (the baseline);

3. a random resize and translation (``post_scale``, ``post_translate``; generator ``(seed, s, 2)``)
   applies to the whole batch in every condition: images (bilinear, black border) and masks
   (nearest) are warped on the device, keypoints follow, and heatmaps and PAFs are rendered
   again from them.

So conditions built with the same seed get exactly the same transforms except in the
replaced slots.  The input batch is never modified; the result holds copies.  ``replaced``
(bool per sample) marks the replaced slots.

An optional judge (a frozen pose network) checks each render at the pose level: its decoded
keypoints against the perturbed ones, PCK@0.2 at least ``judge_pck``; a render that fails keeps
the real sample in its slot, and the rejection is counted.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..datasets.layouts import KeypointLayout
from ..datasets.posemaps import PoseMapSpec, render_heatmaps_torch, render_pafs_torch
from ..errors import ConfigError
from .perturb import Perturber, PerturbConfig
from .renderers import Renderer

__all__ = ["BatchMixer", "MixStats", "FILLS"]

log = logging.getLogger(__name__)
FILLS = ("render", "real-dup", "none")


@dataclass
class MixStats:
    batches: int = 0
    replaced: int = 0
    rejected: int = 0
    seconds: float = 0.0


class BatchMixer:
    """See the module docstring.

    Args:
        layout: keypoint layout of the batches.
        spec: the pose run's pose-map settings (labels are drawn with them).
        fraction: share of each batch to replace, in expectation: ``fraction x batch`` slots,
            the remainder by a Bernoulli draw (0.5 of 8 is 4; 0.5 of 1 is 0 or 1, half the time each).
        fill: ``render``, ``real-dup`` or ``none``.
        renderer: draws the replaced slots (``fill="render"``).
        perturber: moves their arms (default: ``arms-angle``).
        device: the training device (where batches live and labels are drawn).
        seed: mixing is a pure function of ``(seed, step)`` and the batch.
        judge: optional frozen pose network; ``judge_pck`` its acceptance threshold.
    """

    def __init__(self, layout: KeypointLayout, spec: PoseMapSpec = PoseMapSpec(), fraction: float = 0.5,
                 fill: str = "render", renderer: "Renderer | None" = None, perturber: "Perturber | None" = None,
                 device: "str | torch.device" = "cpu", seed: int = 0, post_scale: tuple[float, float] = (0.9, 1.1),
                 post_translate: float = 0.05, judge: "torch.nn.Module | None" = None, judge_pck: float = 0.5,
                 judge_device: "str | torch.device | None" = None) -> None:
        if not 0.0 <= fraction <= 1.0:
            raise ValueError("fraction must be in [0, 1]")
        if fill not in FILLS:
            raise ValueError(f"fill must be one of {FILLS}")
        if fill == "render" and renderer is None:
            raise ValueError("fill='render' needs a renderer")
        self.layout, self.spec, self.fraction, self.fill = layout, spec, fraction if fill != "none" else 0.0, fill
        self.renderer = renderer
        self.perturber = perturber or Perturber(PerturbConfig(), layout)
        if fill == "render" and self.perturber.needs_file_name:
            # batches carry no file names, so every lookup would miss and the "renders" would be
            # the real images' own poses
            raise ConfigError("--augment poses:FILE matches poses by image file name, which training batches do "
                              "not carry: use it with render or generate (then train on that dataset), or use "
                              "arms-angle, arms-slight, arms-high or learned:RUN in the training loop")
        self.device = torch.device(device)
        self.seed = seed
        self.post_scale, self.post_translate = tuple(post_scale), post_translate
        self.judge_device = torch.device(judge_device) if judge_device is not None else self.device
        self.judge = judge.to(self.judge_device).eval().requires_grad_(False) if judge is not None else None
        self.judge_pck = judge_pck
        self.stats = MixStats()
        self.dataset = None                     # real-dup draws from it (see attach)
        self.last: "dict[str, torch.Tensor] | None" = None   # source | render of the last replaced slots

    def attach(self, dataset: Any) -> None:
        """The trainer's training dataset (``PoseMapDataset``), for ``real-dup``."""
        self.dataset = dataset

    def describe(self) -> dict[str, Any]:
        d = {"fill": self.fill, "fraction": self.fraction, "perturbation": self.perturber.cfg.mode,
             "post_scale": list(self.post_scale), "post_translate": self.post_translate}
        if self.renderer is not None:
            d.update(self.renderer.describe())
        return d

    def choose(self, batch_size: int, step: int) -> np.ndarray:
        """The slots replaced at ``step`` (the same for every condition with this seed and fraction).

        The count is ``floor(fraction x batch)`` plus one more with probability equal to the
        remainder, so its expectation is exactly ``fraction x batch`` (a batch of 1 at 0.5 is
        replaced at every other step on average, not never).  The Bernoulli draw and the slots
        come from the generator ``(seed, step, 1)``; returns sorted ``(n,)`` int64 slot indices."""
        rng = np.random.default_rng([self.seed, step, 1])
        want = self.fraction * batch_size
        lo = int(np.floor(want + 1e-9))
        hi = min(lo + 1, batch_size) if want - lo > 1e-9 else lo
        if not hi:
            return np.zeros(0, np.int64)
        # a random ordered draw of the larger count, then the Bernoulli: its prefix is a uniform
        # subset, and where fraction x batch is whole the draws are what they always were
        cand = rng.choice(batch_size, hi, replace=False)
        n = hi if hi == lo or rng.random() < want - lo else lo
        return np.sort(cand[:n]).astype(np.int64)

    def __call__(self, batch: dict, step: int) -> dict:
        """A new batch (copies of every tensor); ``batch`` itself is not modified."""
        t0 = time.perf_counter()
        out = {k: v.clone() if torch.is_tensor(v) else v for k, v in batch.items()}
        out.pop("maps", None)  # full-resolution GAN conditioning is not a pose-network input
        b = batch["image"].shape[0]
        idx = self.choose(b, step) if self.fill != "none" else np.zeros(0, np.int64)
        replaced = torch.zeros(b, dtype=torch.bool, device=out["image"].device)
        if len(idx) and self.fill == "render":
            replaced[self._render(out, batch, idx, step)] = True
        elif len(idx) and self.fill == "real-dup":
            self._duplicate(out, idx, step)
            replaced[torch.as_tensor(idx, device=replaced.device)] = True
        out["replaced"] = replaced
        out = self.post_affine(out, np.random.default_rng([self.seed, step, 2]))
        self.stats.batches += 1
        self.stats.replaced += int(replaced.sum())
        self.stats.seconds += time.perf_counter() - t0
        return out

    # ---- fills ------------------------------------------------------------------------------
    def _render(self, out: dict, batch: dict, idx: np.ndarray, step: int) -> torch.Tensor:
        rng = np.random.default_rng([self.seed, step, 3])
        size = tuple(batch["image"].shape[-2:])
        src_kp = batch["keypoints"][idx].cpu().numpy()
        new_kp = np.stack([self.perturber(k, size, rng) for k in src_kp])
        rd = self.renderer(batch["image"][idx], batch["masks"][idx], src_kp, new_kp)
        if rd.keypoints is not None:   # the poses drawn (an arm the renderer would not move keeps its pose)
            new_kp = np.asarray(rd.keypoints, np.float32)
        imgs = rd.images.to(out["image"].device, out["image"].dtype)
        kpt = torch.from_numpy(new_kp).to(out["keypoints"].device)
        keep = torch.ones(len(idx), dtype=torch.bool, device=out["image"].device)
        if self.judge is not None:
            keep = self._judge_ok(imgs, new_kp).to(keep.device)
            self.stats.rejected += int((~keep).sum())
        sel = torch.as_tensor(idx, device=out["image"].device)[keep]
        small = tuple(batch["heatmaps"].shape[-2:])
        out["image"][sel] = imgs[keep]
        out["keypoints"][sel] = kpt[keep]
        out["masks"][sel] = rd.masks.to(out["masks"].device, out["masks"].dtype)[keep]
        out["heatmaps"][sel] = render_heatmaps_torch(kpt[keep], size, small, self.spec.sigma).to(out["heatmaps"].dtype)
        out["pafs"][sel] = render_pafs_torch(kpt[keep], self.layout.limbs, size, small,
                                             self.spec.paf_width).to(out["pafs"].dtype)
        self.last = {"source": batch["image"][idx][keep].detach(), "render": imgs[keep].detach(),
                     "region": rd.region[keep.to(rd.region.device)].detach()}
        return sel

    def _duplicate(self, out: dict, idx: np.ndarray, step: int) -> None:
        if self.dataset is None:
            raise RuntimeError("real-dup needs the training dataset (BatchMixer.attach)")
        rng = np.random.default_rng([self.seed, step, 4])
        picks = rng.integers(0, len(self.dataset), len(idx))
        # augmented like the rest, with an epoch key of its own so the draw is new
        items = [self.dataset[(int(j), 1_000_003 + step)] for j in picks]
        for k in ("image", "heatmaps", "pafs", "masks", "mask_valid", "keypoints"):
            if k not in out:
                continue
            v = torch.stack([it[k] for it in items]).to(out[k].device, out[k].dtype)
            out[k][torch.as_tensor(idx, device=out[k].device)] = v

    @torch.inference_mode()
    def _judge_ok(self, images: torch.Tensor, new_kp: np.ndarray) -> torch.Tensor:
        from ..posenet.load import predict_batch
        from ..posenet.metrics import image_pck

        kps, _, _, _ = predict_batch(self.judge, images.to(self.judge_device).float(), self.layout, True)
        ok = [image_pck(gt, pred, self.layout) >= self.judge_pck for gt, pred in zip(new_kp, kps)]
        return torch.tensor(ok, dtype=torch.bool)

    # ---- the same resize and translation for every condition ------------------------------------
    def post_affine(self, out: dict, rng: np.random.Generator) -> dict:
        """Random resize (about the image centre) and translation (pixels) of the whole batch,
        in place on ``out`` (which holds copies)."""
        lo, hi = self.post_scale
        img = out["image"]
        b, _, h, w = img.shape
        s = rng.uniform(lo, hi, b)
        t = rng.uniform(-self.post_translate, self.post_translate, (b, 2)) * np.array([w, h])
        if lo == hi == 1.0 and self.post_translate == 0:
            return out
        # output -> input in normalised coordinates (align_corners=False): in = (out - 2t/size) / s
        theta = np.zeros((b, 2, 3), np.float32)
        theta[:, 0, 0] = theta[:, 1, 1] = 1 / s
        theta[:, 0, 2] = -2 * t[:, 0] / w / s
        theta[:, 1, 2] = -2 * t[:, 1] / h / s
        th = torch.from_numpy(theta).to(img.device, torch.float32)
        grid = F.affine_grid(th, [b, 3, h, w], align_corners=False)
        out["image"] = (F.grid_sample(img.float() + 1, grid, mode="bilinear", padding_mode="zeros",
                                      align_corners=False) - 1).to(img.dtype)
        if out["masks"].shape[1]:
            m = out["masks"]
            g = grid if m.shape[-2:] == img.shape[-2:] else F.affine_grid(th, list(m.shape), align_corners=False)
            out["masks"] = F.grid_sample(m.float(), g, mode="nearest", padding_mode="zeros",
                                         align_corners=False).to(m.dtype)
        kp = out["keypoints"].float().clone()
        c = torch.tensor([(w - 1) / 2, (h - 1) / 2], device=kp.device)
        sc = torch.from_numpy(s.astype(np.float32)).to(kp.device).view(b, 1, 1, 1)
        tt = torch.from_numpy(t.astype(np.float32)).to(kp.device).view(b, 1, 1, 2)
        kp[..., :2] = (kp[..., :2] - c) * sc + c + tt
        outside = (kp[..., 0] < 0) | (kp[..., 1] < 0) | (kp[..., 0] > w - 1) | (kp[..., 1] > h - 1)
        kp[..., 2] = torch.where(outside, torch.zeros_like(kp[..., 2]), kp[..., 2])
        small = tuple(out["heatmaps"].shape[-2:])
        out["keypoints"] = kp.to(out["keypoints"].dtype)
        out["heatmaps"] = render_heatmaps_torch(kp, (h, w), small, self.spec.sigma).to(out["heatmaps"].dtype)
        out["pafs"] = render_pafs_torch(kp, self.layout.limbs, (h, w), small, self.spec.paf_width).to(out["pafs"].dtype)
        return out
