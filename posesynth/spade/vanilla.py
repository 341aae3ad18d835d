"""The classic skeleton-vector generator: a person's 2-D keypoint coordinates, as one vector,
to an image through transposed convolutions (DCGAN-style decoder), tanh output.

The vector (:func:`keypoint_vector`) holds, for each keypoint of the first person,
``(x, y)`` normalised to [-1, 1] by the image size (``x / (W - 1) * 2 - 1``), multiplied by
its visibility flag, and the flag itself (1 labelled, 0 not): ``3K`` numbers.  A linear layer
maps it to ``8 ngf`` channels at ``size / 2**n_up`` (4x4 for 128 px with ``n_up = 5``); each
of ``n_up - 1`` transposed 4x4 stride-2 convolutions (+ norm + ReLU; the linear layer has
ReLU only) doubles the resolution
and halves the width (down to ``ngf``); a last transposed conv goes to RGB and tanh.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .pix2pix import _norm, init_pix2pix

__all__ = ["VanillaConfig", "VanillaGenerator", "keypoint_vector"]


def keypoint_vector(keypoints: "torch.Tensor | np.ndarray", size: tuple[int, int]) -> torch.Tensor:
    """``(B, P, K, 3)`` (or ``(B, K, 3)``) keypoints in pixels of an ``(H, W)`` image -> ``(B, 3K)``:
    the first person's normalised ``[x * v, y * v]`` per keypoint, then ``K`` visibility flags."""
    kp = torch.as_tensor(keypoints).float()
    if kp.dim() == 4:
        kp = kp[:, 0] if kp.shape[1] else torch.zeros(kp.shape[0], kp.shape[2], 3, device=kp.device)
    if kp.dim() != 3 or kp.shape[-1] != 3:
        raise ValueError(f"keypoints must be (B, P, K, 3) or (B, K, 3), got {tuple(kp.shape)}")
    h, w = size
    vis = (kp[..., 2] > 0).float()                                            # (B, K)
    denom = torch.tensor([max(w - 1, 1), max(h - 1, 1)], device=kp.device, dtype=kp.dtype)
    xy = (kp[..., :2] / denom * 2 - 1) * vis[..., None]                        # (B, K, 2)
    return torch.cat([xy.flatten(1), vis], 1)


@dataclass
class VanillaConfig:
    """Attributes:
        num_keypoints: ``K`` (the input has ``3K`` numbers).
        size: output ``(H, W)``, multiples of ``2**n_up``.
        ngf: width of the last hidden layer; each earlier one doubles it, up to ``8 ngf``.
        n_up: resolution doublings (5: 4x4 -> 128 at 128 px).
        norm: ``instance``, ``batch`` or ``none``.
        z_dim: noise numbers appended to the vector (0: none; deterministic).
    """

    num_keypoints: int = 17
    size: tuple[int, int] = (128, 128)
    ngf: int = 64
    n_up: int = 5
    norm: str = "instance"
    z_dim: int = 0


class VanillaGenerator(nn.Module):
    """Skeleton vector -> image.  Widths from ``min(8, 2**(n_up-1)) * ngf`` halving to ``ngf``."""

    def __init__(self, cfg: VanillaConfig) -> None:
        super().__init__()
        self.cfg = cfg
        h, w = cfg.size
        f = 2 ** cfg.n_up
        if h % f or w % f:
            raise ValueError(f"vanilla generator size {h}x{w} must be a multiple of {f} (n_up={cfg.n_up})")
        self.start = (h // f, w // f)
        widths = [cfg.ngf * min(2 ** (cfg.n_up - 1 - i), 8) for i in range(cfg.n_up)]  # e.g. 8,8,4,2,1 x ngf
        self.fc = nn.Linear(3 * cfg.num_keypoints + cfg.z_dim, widths[0] * self.start[0] * self.start[1])
        self.fc_act = nn.ReLU(True)  # no norm here: instance norm would erase the per-channel levels the vector sets
        bias = cfg.norm != "batch"
        ups: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:]):
            ups += [nn.ConvTranspose2d(a, b, 4, 2, 1, bias=bias), _norm(cfg.norm, b), nn.ReLU(True)]
        ups += [nn.ConvTranspose2d(widths[-1], 3, 4, 2, 1), nn.Tanh()]
        self.ups = nn.Sequential(*ups)
        self.width0 = widths[0]
        init_pix2pix(self)

    def forward(self, vector: torch.Tensor, noise: "torch.Tensor | None" = None) -> torch.Tensor:
        """``vector``: ``(B, 3K)`` from :func:`keypoint_vector`; returns ``(B, 3, H, W)`` in [-1, 1]."""
        if vector.dim() != 2 or vector.shape[1] != 3 * self.cfg.num_keypoints:
            raise ValueError(f"expected a (B, {3 * self.cfg.num_keypoints}) keypoint vector, got {tuple(vector.shape)}")
        if self.cfg.z_dim:
            if noise is None:
                noise = torch.randn(vector.shape[0], self.cfg.z_dim, device=vector.device, dtype=vector.dtype)
            vector = torch.cat([vector, noise], 1)
        x = self.fc(vector).view(vector.shape[0], self.width0, *self.start)
        return self.ups(self.fc_act(x))
