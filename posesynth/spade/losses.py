"""GAN losses: adversarial (hinge, least squares, WGAN-GP), feature matching, VGG perceptual,
and pose consistency judged by a frozen pose network."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..datasets.layouts import KeypointLayout
from ..datasets.posemaps import PoseMapSpec
from ..errors import ConfigError
from ..losses import dice_bce_logits
from ..posenet.load import load_posenet
from .load import check_same_maps

__all__ = ["gan_loss", "gradient_penalty", "feature_matching_loss", "VGGLoss", "load_vgg19", "vgg19_features",
           "perceptual_loss", "PoseConsistencyLoss", "load_pose_judge", "GAN_MODES"]

log = logging.getLogger(__name__)
GAN_MODES = ("hinge", "ls", "wgan-gp")


def gan_loss(preds: Sequence[Sequence[torch.Tensor]], target_real: bool, mode: str = "hinge",
             for_discriminator: bool = True) -> torch.Tensor:
    """Adversarial loss averaged over discriminator scales (each scale's last output).

    hinge: D real ``mean(relu(1 - x))``, D fake ``mean(relu(1 + x))``, G ``-mean(x)``;
    ls: ``mean((x - t)^2)`` with ``t`` 1 for real, 0 for fake; wgan-gp: ``-mean(x)`` for
    real, ``mean(x)`` for fake (add :func:`gradient_penalty` for D).
    """
    total = 0.0
    for scale in preds:
        x = scale[-1]
        if mode == "hinge":
            if for_discriminator:
                loss = F.relu(1 - x).mean() if target_real else F.relu(1 + x).mean()
            else:
                assert target_real, "the generator's hinge loss is computed on fakes as real"
                loss = -x.mean()
        elif mode == "ls":
            loss = F.mse_loss(x, torch.full_like(x, 1.0 if target_real else 0.0))
        elif mode == "wgan-gp":
            loss = -x.mean() if target_real else x.mean()
        else:
            raise ConfigError(f"gan_mode must be one of {GAN_MODES}, not {mode!r}")
        total = total + loss
    return total / len(preds)


def gradient_penalty(disc: Callable, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """WGAN-GP: ``mean((||grad D(x_hat)|| - 1)^2)`` at random interpolates, over all scales."""
    a = torch.rand(real.shape[0], 1, 1, 1, device=real.device, dtype=real.dtype)
    x = (a * real.detach() + (1 - a) * fake.detach()).requires_grad_(True)
    out = sum(s[-1].sum() for s in disc(x))
    (g,) = torch.autograd.grad(out, x, create_graph=True)
    return ((g.flatten(1).norm(dim=1) - 1) ** 2).mean()


def feature_matching_loss(fake: Sequence[Sequence[torch.Tensor]], real: Sequence[Sequence[torch.Tensor]]) -> torch.Tensor:
    """L1 between the discriminator's intermediate features for fake and (detached) real
    inputs, all layers but the score map, averaged over scales (NVlabs' GAN_Feat_loss
    without the lambda)."""
    total = 0.0
    for f_scale, r_scale in zip(fake, real):
        for f, r in zip(f_scale[:-1], r_scale[:-1]):
            total = total + F.l1_loss(f, r.detach())
    return total / len(fake)


VGG19_FILE = "vgg19-dcbb9e9d.pth"  # torchvision's ImageNet VGG19 weights
_VGG_SLICES = (2, 7, 12, 21, 30)   # relu1_1, relu2_1, relu3_1, relu4_1, relu5_1 (exclusive ends)


def _vgg_candidates(path: "str | Path | None") -> list[Path]:
    if path:
        return [Path(path)]
    hub = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch"))
    return [hub / "hub" / "checkpoints" / VGG19_FILE]


_VGG19_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512)


def vgg19_features() -> nn.Sequential:
    """torchvision's VGG19 ``features`` up to relu5_1: its first 30 modules, with the same
    indices (so ``features.{i}.weight`` names the same layer), randomly initialised.  Built
    without the classifier (480 MB of weights the perceptual loss never uses)."""
    layers: list[nn.Module] = []
    c_in = 3
    for v in _VGG19_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c_in, v, 3, padding=1), nn.ReLU(inplace=True)]
            c_in = v
    assert len(layers) == _VGG_SLICES[-1]
    return nn.Sequential(*layers)


def _read_vgg_file(path: Path) -> dict[str, torch.Tensor]:
    """The ``features.*`` tensors of a VGG19 file (keys without the prefix), or all of its
    tensors when none has it (a file of ``vgg.features``' own state dict).  A safetensors file is
    read tensor by tensor and a ``.pth`` memory-mapped, so the classifier's 480 MB are not read."""
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                keys = list(f.keys())
                pick = [k for k in keys if k.startswith("features.")] or keys
                sd = {k: f.get_tensor(k) for k in pick}
        else:
            try:
                sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:   # a file in torch's legacy format cannot be memory-mapped
                sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged file: safetensors and torch raise their own types
        raise ConfigError(f"{path}: cannot read VGG19 weights ({e.__class__.__name__}: {e})") from None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ConfigError(f"{path}: not a VGG19 state dict (expected a mapping of names to tensors)")
    if any(k.startswith("features.") for k in sd):
        return {k[len("features."):]: v for k, v in sd.items() if k.startswith("features.")}
    return sd


def load_vgg19(path: "str | Path | None" = None) -> "nn.Module | None":
    """VGG19's features up to relu5_1 (:func:`vgg19_features`) with ImageNet weights from
    ``path`` or the torch hub cache.  The file may be torchvision's whole state dict (``.pth``
    or ``.safetensors``), its ``features.*`` tensors alone, or ``vgg.features``' own state dict
    (keys ``0.weight``...); the classifier is neither read into memory nor kept.

    Returns ``None`` when no weights file is there (nothing is downloaded).  A file that is
    not VGG19 is refused with a message naming it.
    """
    for cand in _vgg_candidates(path):
        if cand.is_file():
            feats = vgg19_features()
            want = feats.state_dict()
            got = {k: v for k, v in _read_vgg_file(cand).items() if k in want}
            missing = [f"features.{k}" for k in want if k not in got]
            if missing:
                raise ConfigError(f"{cand}: not VGG19 weights ({len(missing)} of its tensors missing, "
                                  f"e.g. {missing[0]})")
            wrong = [k for k in want if got[k].shape != want[k].shape]
            if wrong:
                k = wrong[0]
                raise ConfigError(f"{cand}: not VGG19 weights (features.{k} is {tuple(got[k].shape)}, "
                                  f"VGG19's is {tuple(want[k].shape)})")
            feats.load_state_dict(got)
            return feats
    if path:
        raise ConfigError(f"{path}: VGG19 weights file not found")
    return None


class VGGLoss(nn.Module):
    """Perceptual loss: weighted L1 between VGG19 relu1_1..relu5_1 features (weights 1/32,
    1/16, 1/8, 1/4, 1) of generated and real images in [-1, 1], normalised with ImageNet
    statistics as VGG expects.  The network is frozen and in eval mode."""

    WEIGHTS = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)

    def __init__(self, features: nn.Module) -> None:
        super().__init__()
        self.slices = nn.ModuleList()
        start = 0
        for end in _VGG_SLICES:
            self.slices.append(nn.Sequential(*[features[i] for i in range(start, end)]))
            start = end
        self.requires_grad_(False)
        self.eval()
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def train(self, mode: bool = True) -> "VGGLoss":
        return super().train(False)  # always eval

    def forward(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        x = torch.cat([fake, real.detach()], 0)
        x = ((x + 1) / 2 - self.mean) / self.std
        n = fake.shape[0]
        loss = 0.0
        for w, s in zip(self.WEIGHTS, self.slices):
            x = s(x)
            loss = loss + w * F.l1_loss(x[:n], x[n:].detach())
        return loss


class PoseConsistencyLoss(nn.Module):
    """A frozen pose network judges the generated image against the target pose.

    ``judge(image)`` maps ``(B, 3, H, W)`` in [-1, 1] to ``(heatmaps (B, K, h, w), pafs
    (B, 2L, h, w), mask logits (B, M, H, W))``, like :class:`~posesynth.posenet.model.PoseNet`.  The judge is put in eval mode and its
    parameters stop receiving gradients; only the image does.

    Loss: ``w_hm * MSE(heatmaps) + w_paf * MSE(pafs) + w_mask * DiceBCE(mask)`` (100, 100, 1 as
    in the original; the mask term is BCE-with-logits + Dice on the logits in float32).  Targets are resized (bilinear) to the judge's output size if needed.
    """

    def __init__(self, judge: nn.Module, w_heatmap: float = 100.0, w_paf: float = 100.0, w_mask: float = 1.0) -> None:
        super().__init__()
        self.judge = judge
        judge.requires_grad_(False)
        judge.eval()
        self.w = (w_heatmap, w_paf, w_mask)

    def train(self, mode: bool = True) -> "PoseConsistencyLoss":
        super().train(mode)
        self.judge.eval()  # the judge never leaves eval mode
        return self

    def forward(self, image: torch.Tensor, heatmaps: torch.Tensor, pafs: torch.Tensor,
                masks: "torch.Tensor | None", mask_valid: "torch.Tensor | None" = None
                ) -> tuple[torch.Tensor, dict[str, float]]:
        hm, paf, mask = self.judge(image)

        def fit(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
            t = t.to(like.dtype)
            return t if t.shape[-2:] == like.shape[-2:] else F.interpolate(t, like.shape[-2:], mode="bilinear",
                                                                           align_corners=False)

        l_hm = F.mse_loss(hm, fit(heatmaps, hm))
        l_paf = F.mse_loss(paf, fit(pafs, paf))
        l_mask = (dice_bce_logits(mask, fit(masks, mask), valid=mask_valid)
                  if masks is not None and masks.shape[1] and mask is not None else hm.new_zeros(()))
        total = self.w[0] * l_hm + self.w[1] * l_paf + self.w[2] * l_mask
        return total, {"pose_hm": float(l_hm.detach()), "pose_paf": float(l_paf.detach()),
                       "pose_mask": float(l_mask.detach())}


def perceptual_loss(mode: str, weights: str = "", weight: float = 10.0) -> "VGGLoss | None":
    """The VGG19 perceptual loss a run asks for: ``mode`` ``off`` (or ``weight`` 0) gives none;
    ``auto`` uses the weights where they are (the torch hub cache, or ``weights``) and says once
    that it trains without them otherwise; ``on`` refuses to run without them."""
    if mode == "off" or weight == 0:
        return None
    feats = load_vgg19(weights or None)
    if feats is None:
        if mode == "on":
            raise ConfigError("the perceptual loss was asked for (--vgg on) but no VGG19 weights were found "
                              "in the torch hub cache; give a file with --vgg-weights")
        log.warning("perceptual loss off: no VGG19 weights in the torch hub cache (~/.cache/torch/hub/"
                    f"checkpoints/{VGG19_FILE}) and none given with --vgg-weights; training without it")
        return None
    return VGGLoss(feats)


def load_pose_judge(run: str, layout: KeypointLayout, spec: PoseMapSpec, device: "str | torch.device",
                    what: str) -> nn.Module:
    """A pose-network run's frozen network as the judge of pose consistency, checked to predict
    ``layout`` (and its masks) from the pose maps ``spec`` that ``what`` draws."""
    judge, judge_layout, meta = load_posenet(run, device)
    if judge_layout.keypoints != layout.keypoints or judge_layout.num_masks != layout.num_masks:
        raise ConfigError(f"pose judge {run} predicts layout '{judge_layout.name}', the GAN data is '{layout.name}'")
    check_same_maps(PoseMapSpec.from_dict(meta["posemaps"]), spec, f"pose judge {run}", what)
    return judge
