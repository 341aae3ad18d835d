"""SPADE residual block (NVlabs SPADE's ``SPADEResnetBlock``)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from .normalization import SPADE, resize_maps

__all__ = ["SPADEResBlock"]


class SPADEResBlock(nn.Module):
    """``x + conv_1(act(SPADE_1(conv_0(act(SPADE_0(x))))))``, with a learned shortcut
    ``conv_s(SPADE_s(x))`` (1x1, no bias) when ``fin != fout``.

    Args:
        fin, fout: input and output channels; the middle width is ``min(fin, fout)``.
        label_nc: channels of the conditioning maps.
        norm: param-free norm inside SPADE (``"instance"`` or ``"batch"``).
        spectral: spectral norm on ``conv_0``, ``conv_1`` and ``conv_s`` (as NVlabs' ``spectral...`` norm_G).

    Same layers as NVlabs; faster because ``SPADE_0`` and ``SPADE_s`` normalise the same
    input, so the parameter-free norm of ``x`` is computed once for both.
    """

    def __init__(self, fin: int, fout: int, label_nc: int, norm: str = "instance", spectral: bool = True,
                 hidden: int = 128) -> None:
        super().__init__()
        self.learned_shortcut = fin != fout
        fmid = min(fin, fout)
        sn = spectral_norm if spectral else (lambda m: m)
        self.conv_0 = sn(nn.Conv2d(fin, fmid, 3, padding=1))
        self.conv_1 = sn(nn.Conv2d(fmid, fout, 3, padding=1))
        self.norm_0 = SPADE(fin, label_nc, norm, hidden)
        self.norm_1 = SPADE(fmid, label_nc, norm, hidden)
        if self.learned_shortcut:
            self.conv_s = sn(nn.Conv2d(fin, fout, 1, bias=False))
            self.norm_s = SPADE(fin, label_nc, norm, hidden)

    @staticmethod
    def act(x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(x, 0.2)

    def forward(self, x: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
        """x: ``(B, fin, h, w)``; maps: ``(B, label_nc, h, w)`` already at x's resolution."""
        maps = resize_maps(maps, x.shape[-2:])
        nx = self.norm_0.norm(x)
        g0, b0 = self.norm_0.modulation(maps)
        if self.learned_shortcut:
            # norm_s sees the same x as norm_0: the same statistics in training and in eval
            # (their running means are updated identically), so reuse them
            gs, bs = self.norm_s.modulation(maps)
            x_s = self.conv_s(torch.addcmul(bs, nx, 1 + gs))
        else:
            x_s = x
        dx = self.conv_0(self.act(torch.addcmul(b0, nx, 1 + g0)))
        dx = self.conv_1(self.act(self.norm_1(dx, maps)))
        return x_s + dx
