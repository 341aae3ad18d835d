"""GAN-in-the-loop batch mixing: part of each training batch replaced by images the generator
renders from arm-perturbed keypoints, labelled from those keypoints.

For the chosen ``fraction`` of a batch (default half), :class:`GANBatchMixer`:

1. perturbs the keypoints (:mod:`posesynth.augment.perturb`),
2. renders the pose maps: heatmaps and PAFs from the perturbed keypoints, the sample's own
   masks (the seatbelt stays where it was),
3. renders the image with the generator: eval mode, ``torch.inference_mode``, on
   ``gan_device``, which may differ from the pose network's ``device`` (tensors move once,
   device to device),
4. regenerates every label from the perturbed keypoints: heatmaps and PAFs at the targets'
   resolution; masks are the ones the image was drawn from.

The rest of the batch is untouched: the returned batch holds copies, never aliases, of the
input tensors (the original code's "real" half received the perturbed labels).

Then, as in the original, a random resize and translation (``post_scale``, ``post_translate``;
one draw per sample) apply to the whole mixed batch: images (bilinear, black border) and masks
(nearest) are warped on the device, keypoints follow, and heatmaps and PAFs are rendered again
from them.  Set ``post_scale=(1, 1)`` and ``post_translate=0`` to skip it.

An optional judge (a frozen pose network) drops generated samples whose predicted heatmaps
disagree with the perturbed pose (MSE above ``judge_threshold``); their slot keeps the real
sample, and the drop is counted.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..datasets.layouts import KeypointLayout
from ..datasets.posemaps import PoseMapSpec, render_heatmaps, render_pafs
from .perturb import PerturbConfig, perturb_keypoints

__all__ = ["GANBatchMixer", "MixStats"]

log = logging.getLogger(__name__)


@dataclass
class MixStats:
    batches: int = 0
    generated: int = 0
    rejected: int = 0
    seconds: float = 0.0


def _label_maps(kps: np.ndarray, layout: KeypointLayout, in_size, out_size, spec: PoseMapSpec) -> tuple[np.ndarray, np.ndarray]:
    hm = np.stack([render_heatmaps(k, in_size, out_size, spec.sigma) for k in kps])
    paf = np.stack([render_pafs(k, layout.limbs, in_size, out_size, spec.paf_width) for k in kps])
    return hm, paf


class GANBatchMixer:
    """Replaces ``fraction`` of each batch with generated, correctly labelled samples.

    Args:
        generator: a trained :class:`~posesynth.spade.generator.SPADEGenerator`; it is put in
            eval mode and frozen here.
        layout: the keypoint layout of the batches (must match the generator's).
        fraction: share of each batch to replace (rounded; 0.5 of 8 is 4).
        perturb: how keypoints are perturbed.
        gan_device: where the generator runs (``"cuda:1"`` with the pose net on ``"cuda:0"``).
        device: where the pose network's batches live.
        gan_size: the generator's ``(H, W)``; batches of another size are resized to and from it.
        judge, judge_threshold: optional pose-consistency filter.
        seed: mixing is a pure function of ``(seed, step)`` and the batch.
    """

    def __init__(self, generator: torch.nn.Module, layout: KeypointLayout, fraction: float = 0.5,
                 perturb: PerturbConfig = PerturbConfig(), spec: PoseMapSpec = PoseMapSpec(),
                 gan_device: "str | torch.device" = "cpu", device: "str | torch.device" = "cpu",
                 gan_size: "tuple[int, int] | None" = None, judge: "torch.nn.Module | None" = None,
                 judge_threshold: float = 0.01, seed: int = 0, stride: int = 4,
                 post_scale: tuple[float, float] = (0.9, 1.1), post_translate: float = 0.05) -> None:
        if not 0.0 <= fraction <= 1.0:
            raise ValueError("fraction must be in [0, 1]")
        self.gan_device, self.device = torch.device(gan_device), torch.device(device)
        self.G = generator.to(self.gan_device).eval().requires_grad_(False)
        self.layout, self.fraction, self.perturb, self.spec = layout, fraction, perturb, spec
        self.gan_size = tuple(gan_size) if gan_size else None
        self.judge = judge.to(self.gan_device).eval().requires_grad_(False) if judge is not None else None
        self.judge_threshold = judge_threshold
        self.seed, self.stride = seed, stride
        self.post_scale, self.post_translate = tuple(post_scale), post_translate
        self.stats = MixStats()
        self.last_generated: "torch.Tensor | None" = None  # (n, 3, H, W) of the last batch, for reports

    def choose(self, batch_size: int, rng: np.random.Generator) -> np.ndarray:
        n = int(round(self.fraction * batch_size))
        return np.sort(rng.choice(batch_size, n, replace=False)) if n else np.zeros(0, np.int64)

    @torch.inference_mode()
    def generate(self, keypoints: np.ndarray, masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Images ``(n, 3, H, W)`` on ``self.device`` for ``(n, P, K, 3)`` keypoints in a
        ``size`` image and masks ``(n, M, H, W)`` (any device)."""
        gsize = self.gan_size or size
        kp = keypoints.copy()
        if gsize != size:
            kp[..., 0] = (kp[..., 0] + 0.5) * gsize[1] / size[1] - 0.5
            kp[..., 1] = (kp[..., 1] + 0.5) * gsize[0] / size[0] - 0.5
        hm, paf = _label_maps(kp, self.layout, gsize, gsize, self.spec)
        maps = [torch.from_numpy(hm), torch.from_numpy(paf)]
        maps = torch.cat(maps, 1).to(self.gan_device, non_blocking=True)
        if self.layout.num_masks:
            m = masks.to(self.gan_device, non_blocking=True).float()
            if tuple(m.shape[-2:]) != gsize:
                m = F.interpolate(m, size=gsize, mode="area" if m.shape[-1] > gsize[1] else "bilinear")
            maps = torch.cat([maps, m], 1)
        fake = self.G(maps.contiguous(memory_format=torch.channels_last))
        if gsize != size:
            fake = F.interpolate(fake, size=size, mode="bilinear", align_corners=False)
        return fake.to(self.device, non_blocking=True).contiguous()

    @torch.inference_mode()
    def _judge_ok(self, fake: torch.Tensor, heatmaps: torch.Tensor) -> torch.Tensor:
        hm, _, _ = self.judge(fake.to(self.gan_device))
        target = heatmaps.to(self.gan_device)
        if target.shape[-2:] != hm.shape[-2:]:
            target = F.interpolate(target, size=hm.shape[-2:], mode="bilinear", align_corners=False)
        err = ((hm - target) ** 2).flatten(1).mean(1)
        return (err <= self.judge_threshold).to(self.device)

    def __call__(self, batch: dict, step: int) -> dict:
        """A new batch (copies of every tensor); ``batch`` itself is not modified."""
        import time

        t0 = time.perf_counter()
        out = {k: v.clone() if torch.is_tensor(v) else v for k, v in batch.items()}
        b = batch["image"].shape[0]
        rng = np.random.default_rng([self.seed, step])
        idx = self.choose(b, rng)
        if len(idx) == 0:
            return self.post_affine(out, rng)
        size = tuple(batch["image"].shape[-2:])
        src_kp = batch["keypoints"][idx].cpu().numpy()
        new_kp = np.stack([perturb_keypoints(k, self.layout, size, rng, self.perturb) for k in src_kp])
        fake = self.generate(new_kp, batch["masks"][idx], size).to(out["image"].dtype)
        small = tuple(batch["heatmaps"].shape[-2:])
        hm, paf = _label_maps(new_kp, self.layout, size, small, self.spec)
        hm_t = torch.from_numpy(hm).to(self.device)
        paf_t = torch.from_numpy(paf).to(self.device)
        keep = torch.ones(len(idx), dtype=torch.bool, device=self.device)
        if self.judge is not None:
            keep = self._judge_ok(fake, hm_t)
            self.stats.rejected += int((~keep).sum())
        sel = torch.as_tensor(idx, device=self.device)[keep]
        out["image"][sel] = fake[keep]
        out["heatmaps"][sel] = hm_t[keep]
        out["pafs"][sel] = paf_t[keep]
        out["keypoints"][sel] = torch.from_numpy(new_kp).to(self.device)[keep]
        if "maps" in out:  # full-resolution conditioning maps, when the batch carries them
            del out["maps"]
        out["generated"] = torch.zeros(b, dtype=torch.bool, device=self.device)
        out["generated"][sel] = True
        self.last_generated = fake[keep].detach()
        out = self.post_affine(out, rng)
        self.stats.batches += 1
        self.stats.generated += int(keep.sum())
        self.stats.seconds += time.perf_counter() - t0
        return out

    def post_affine(self, out: dict, rng: np.random.Generator) -> dict:
        """The original's random resize and translation of the mixed batch (in place on ``out``,
        which holds copies).  Scale about the image centre, shift in pixels."""
        lo, hi = self.post_scale
        if lo == hi == 1.0 and self.post_translate == 0:
            return out
        img = out["image"]
        b, _, h, w = img.shape
        s = rng.uniform(lo, hi, b)
        t = rng.uniform(-self.post_translate, self.post_translate, (b, 2)) * np.array([w, h])
        # output -> input in normalised coordinates (align_corners=False): in = (out - 2t/size) / s
        theta = np.zeros((b, 2, 3), np.float32)
        theta[:, 0, 0] = theta[:, 1, 1] = 1 / s
        theta[:, 0, 2] = -2 * t[:, 0] / w / s
        theta[:, 1, 2] = -2 * t[:, 1] / h / s
        grid = F.affine_grid(torch.from_numpy(theta).to(img.device, img.dtype), list(img.shape), align_corners=False)
        out["image"] = F.grid_sample(img + 1, grid, mode="bilinear", padding_mode="zeros", align_corners=False) - 1
        if out["masks"].shape[1]:
            m = out["masks"]
            g = grid if m.shape[-2:] == img.shape[-2:] else F.affine_grid(
                torch.from_numpy(theta).to(m.device, m.dtype), list(m.shape), align_corners=False)
            out["masks"] = F.grid_sample(m, g, mode="nearest", padding_mode="zeros", align_corners=False)
        kp = out["keypoints"].cpu().numpy().copy()
        c = np.array([(w - 1) / 2, (h - 1) / 2], np.float32)
        kp[..., :2] = (kp[..., :2] - c) * s[:, None, None, None].astype(np.float32) + c + t[:, None, None, :].astype(
            np.float32)
        outside = (kp[..., 0] < 0) | (kp[..., 1] < 0) | (kp[..., 0] > w - 1) | (kp[..., 1] > h - 1)
        kp[..., 2] = np.where(outside, 0.0, kp[..., 2])
        hm, paf = _label_maps(kp, self.layout, (h, w), tuple(out["heatmaps"].shape[-2:]), self.spec)
        out["keypoints"] = torch.from_numpy(kp).to(self.device)
        out["heatmaps"] = torch.from_numpy(hm).to(self.device, out["heatmaps"].dtype)
        out["pafs"] = torch.from_numpy(paf).to(self.device, out["pafs"].dtype)
        return out
