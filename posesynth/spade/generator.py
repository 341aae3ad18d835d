"""The SPADE generator: pose maps -> person image.

Layer for layer NVlabs SPADE's ``SPADEGenerator`` without the VAE: the maps, downsampled
to ``size / 2**num_up``, go through a 3x3 conv to ``16 * ngf`` channels, then ``head_0``,
``G_middle_0``, ``G_middle_1`` (``16 ngf``) and ``up_0 .. up_3`` (``8, 4, 2, 1 x ngf``)
SPADE residual blocks with nearest 2x upsampling between them, a leaky ReLU, a 3x3 conv to
RGB and tanh.  ``num_up`` is 5 (``"normal"``), 6 (``"more"``) or 7 (``"most"``, adds
``up_4`` at ``ngf / 2``); the output size may be any multiple of ``2**num_up`` (e.g. 128,
256 or 384 with ``normal``), not necessarily square.

Output: ``(B, 3, H, W)`` in [-1, 1]; real images are scaled the same way (``x / 127.5 - 1``).  A
``residual`` generator (refine mode) returns a correction in [-2, 2] that starts at exactly 0.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .architecture import SPADEResBlock
from .normalization import resize_maps

__all__ = ["GeneratorConfig", "SPADEGenerator", "init_weights", "convert_nvlabs_state_dict"]

NUM_UP = {"normal": 5, "more": 6, "most": 7}


@dataclass
class GeneratorConfig:
    """Generator settings.

    Attributes:
        label_nc: input pose-map channels (26 for driver9 with the seatbelt).
        size: output ``(H, W)`` in pixels, multiples of ``2**num_up``.
        ngf: base width (NVlabs default 64).
        num_upsampling: ``"normal"`` (5), ``"more"`` (6) or ``"most"`` (7).
        norm: param-free norm inside SPADE: ``"instance"`` or ``"batch"``.
        spectral: spectral norm in the residual blocks.
        z_dim: channels of optional noise concatenated to the downsampled maps (0: none).
        area_channels: the last this many conditioning channels are images (inpainting: the
            image with its region removed and the hole mask) and are downsampled by area
            averaging, so coarse levels see the colours around the hole; pose maps keep
            NVlabs' nearest-neighbour resizing (0: every channel nearest, as NVlabs).
        hidden: width of each SPADE layer's shared convolution over the maps (NVlabs: 128).
            At full resolution these convolutions cost most of the generator's time: at
            ngf 16 and 256x128, 32 makes a training step about 1.8x faster.
        output: ``"image"`` (tanh, in [-1, 1]) or ``"residual"``: a correction in [-2, 2]
            (``2 tanh``) whose last convolution starts at zero, so an untrained generator
            returns exactly 0 (refine mode adds it to the warp: it starts as the warp).
    """

    label_nc: int = 26
    size: tuple[int, int] = (128, 128)
    ngf: int = 64
    num_upsampling: str = "normal"
    norm: str = "instance"
    spectral: bool = True
    z_dim: int = 0
    area_channels: int = 0
    hidden: int = 128
    output: str = "image"


def init_weights(module: nn.Module, gain: float = 0.02) -> None:
    """NVlabs' default initialisation: Xavier-normal (gain 0.02) conv/linear weights, zero biases."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            w = m.parametrizations.weight.original if hasattr(m, "parametrizations") else m.weight
            nn.init.xavier_normal_(w, gain=gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class SPADEGenerator(nn.Module):
    def __init__(self, cfg: GeneratorConfig) -> None:
        super().__init__()
        if cfg.num_upsampling not in NUM_UP:
            raise ValueError(f"num_upsampling must be one of {list(NUM_UP)}")
        self.cfg = cfg
        self.num_up = NUM_UP[cfg.num_upsampling]
        h, w = cfg.size
        f = 2 ** self.num_up
        if h % f or w % f:
            raise ValueError(f"generator size {h}x{w} must be a multiple of {f} ({cfg.num_upsampling} upsampling)")
        self.start = (h // f, w // f)
        nf = cfg.ngf
        block = lambda a, b: SPADEResBlock(a, b, cfg.label_nc, cfg.norm, cfg.spectral, cfg.hidden)  # noqa: E731
        self.fc = nn.Conv2d(cfg.label_nc + cfg.z_dim, 16 * nf, 3, padding=1)
        self.head_0 = block(16 * nf, 16 * nf)
        self.G_middle_0 = block(16 * nf, 16 * nf)
        self.G_middle_1 = block(16 * nf, 16 * nf)
        self.up_0 = block(16 * nf, 8 * nf)
        self.up_1 = block(8 * nf, 4 * nf)
        self.up_2 = block(4 * nf, 2 * nf)
        self.up_3 = block(2 * nf, 1 * nf)
        final = nf
        if self.num_up == 7:
            self.up_4 = block(nf, nf // 2)
            final = nf // 2
        self.conv_img = nn.Conv2d(final, 3, 3, padding=1)
        init_weights(self)
        if cfg.output not in ("image", "residual"):
            raise ValueError(f"output must be image or residual, not {cfg.output!r}")
        if cfg.output == "residual":   # starts as the identity correction: exactly 0
            nn.init.zeros_(self.conv_img.weight)
            nn.init.zeros_(self.conv_img.bias)

    def forward(self, maps: torch.Tensor, noise: "torch.Tensor | None" = None) -> torch.Tensor:
        """maps: ``(B, label_nc, H, W)`` float (heatmaps/masks in [0, 1], PAFs in [-1, 1]);
        noise: ``(B, z_dim, h0, w0)`` when ``z_dim > 0`` (drawn from N(0, 1) if None).
        Returns ``(B, 3, H, W)`` in [-1, 1]."""
        pyramid: dict[tuple[int, int], torch.Tensor] = {tuple(maps.shape[-2:]): maps}
        a = self.cfg.area_channels
        # the pose maps and the image channels, each split off once: a channel slice is not
        # contiguous, and every resize of one would copy the whole slice first
        fmt = torch.channels_last if maps.is_contiguous(memory_format=torch.channels_last) and not \
            maps.is_contiguous() else torch.contiguous_format
        parts = (maps[:, :-a].contiguous(memory_format=fmt), maps[:, -a:].contiguous(memory_format=fmt)) if a else None

        def level(size: tuple[int, int]) -> torch.Tensor:  # the maps resized once per resolution
            if size not in pyramid:
                pyramid[size] = self.resize(maps, size, parts)
            return pyramid[size]

        def at(x: torch.Tensor) -> torch.Tensor:
            return level(tuple(x.shape[-2:]))

        x = level(self.start)
        if self.cfg.z_dim:
            if noise is None:
                noise = torch.randn(maps.shape[0], self.cfg.z_dim, *self.start, device=maps.device, dtype=maps.dtype)
            x = torch.cat([x, noise], 1)
        x = self.fc(x)
        x = self.head_0(x, at(x))
        x = self.up(x)
        x = self.G_middle_0(x, at(x))
        if self.num_up >= 6:
            x = self.up(x)
        x = self.G_middle_1(x, at(x))
        for blk in (self.up_0, self.up_1, self.up_2, self.up_3):
            x = self.up(x)
            x = blk(x, at(x))
        if self.num_up == 7:
            x = self.up(x)
            x = self.up_4(x, at(x))
        x = self.conv_img(F.leaky_relu(x, 0.2))
        return torch.tanh(x) * (2.0 if self.cfg.output == "residual" else 1.0)

    def resize(self, maps: torch.Tensor, size: tuple[int, int],
               parts: "tuple[torch.Tensor, torch.Tensor] | None" = None) -> torch.Tensor:
        """The conditioning at ``size``: nearest for pose maps, area for image channels
        (``parts``: maps' pose and image channels, already split)."""
        a = self.cfg.area_channels
        if not a or tuple(maps.shape[-2:]) == tuple(size):
            return resize_maps(maps, size)
        pose, img = parts if parts is not None else (maps[:, :-a], maps[:, -a:])
        return torch.cat([resize_maps(pose, size), F.adaptive_avg_pool2d(img, size)], 1)

    @staticmethod
    def up(x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2, mode="nearest")


def convert_nvlabs_state_dict(sd: "dict[str, torch.Tensor]") -> dict[str, torch.Tensor]:
    """Map an NVlabs ``SPADEGenerator`` state dict (``torch.nn.utils.spectral_norm`` style,
    separate ``mlp_gamma``/``mlp_beta``) to this generator's keys."""
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if ".mlp_shared.0." in k:
            out[k.replace(".mlp_shared.0.", ".mlp_shared.")] = v
        elif ".mlp_gamma." in k:
            beta = sd[k.replace(".mlp_gamma.", ".mlp_beta.")]
            out[k.replace(".mlp_gamma.", ".mlp_gamma_beta.")] = torch.cat([v, beta], 0)
        elif ".mlp_beta." in k:
            continue
        elif k.endswith(".weight_orig"):
            out[k.replace(".weight_orig", ".parametrizations.weight.original")] = v
        elif k.endswith(".weight_u"):
            out[k.replace(".weight_u", ".parametrizations.weight.0._u")] = v
        elif k.endswith(".weight_v"):
            out[k.replace(".weight_v", ".parametrizations.weight.0._v")] = v
        else:
            out[k] = v
    return out
