"""SPADE: spatially-adaptive (de)normalisation (Park et al., 2019), as NVlabs SPADE defines it.

``out = norm(x) * (1 + gamma(maps)) + beta(maps)`` where ``norm`` is a parameter-free
instance or batch norm, and ``gamma``/``beta`` are 3x3 convolutions over a shared 3x3
convolution (``maps -> 128`` hidden channels, ReLU) of the maps resized (nearest) to ``x``.

Numerically the same layers as NVlabs' ``SPADE`` class; two implementation differences make
it faster: the gamma and beta convolutions are one convolution with ``2 * C`` outputs, and
the caller passes maps already resized to ``x``'s resolution (once per resolution, not once
per layer).  :func:`posesynth.spade.generator.convert_nvlabs_state_dict` maps NVlabs weights.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SPADE", "param_free_norm", "resize_maps"]


def param_free_norm(kind: str, channels: int) -> nn.Module:
    """``"instance"`` or ``"batch"`` normalisation without learned affine parameters."""
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=False)
    if kind == "batch":
        return nn.BatchNorm2d(channels, affine=False)
    raise ValueError(f"param-free norm must be 'instance' or 'batch', not {kind!r}")


def resize_maps(maps: torch.Tensor, size: "tuple[int, int]") -> torch.Tensor:
    """Nearest-neighbour resize of ``(B, C, H, W)`` maps to ``size`` (as NVlabs SPADE)."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps, size=size, mode="nearest")


class SPADE(nn.Module):
    """One SPADE layer.

    Args:
        norm_nc: channels ``C`` of the activation being normalised.
        label_nc: channels of the conditioning maps (26 for driver9).
        norm: ``"instance"`` or ``"batch"``.
        hidden: width of the shared convolution (128 in SPADE).
        kernel: kernel size of the three convolutions (3).
    """

    def __init__(self, norm_nc: int, label_nc: int, norm: str = "instance", hidden: int = 128,
                 kernel: int = 3) -> None:
        super().__init__()
        self.norm = param_free_norm(norm, norm_nc)
        pad = kernel // 2
        self.mlp_shared = nn.Conv2d(label_nc, hidden, kernel, padding=pad)
        self.mlp_gamma_beta = nn.Conv2d(hidden, 2 * norm_nc, kernel, padding=pad)
        self.norm_nc = norm_nc

    def modulation(self, maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(gamma, beta)``, each ``(B, C, h, w)``, from maps at the activation's resolution."""
        gb = self.mlp_gamma_beta(F.relu(self.mlp_shared(maps)))
        # chunk, not two slices: the backward of a slice fills a zero tensor of gb's size
        # and copies into it, twice; chunk's backward is one concatenation (10% of a step)
        gamma, beta = gb.chunk(2, dim=1)
        return gamma, beta

    def forward(self, x: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
        """x: ``(B, C, h, w)``; maps: ``(B, label_nc, H, W)`` (resized here if needed)."""
        gamma, beta = self.modulation(resize_maps(maps, x.shape[-2:]))
        return torch.addcmul(beta, self.norm(x), 1 + gamma)
