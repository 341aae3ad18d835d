"""pix2pix generators on a stick-figure image, and the 70x70 PatchGAN (Isola et al., CVPR 2017;
as in junyanz/pytorch-CycleGAN-and-pix2pix, which Everybody Dance Now builds on).

- :class:`ResnetGenerator`: a 7x7 conv, ``n_down`` stride-2 convs, ``n_blocks`` residual
  blocks, ``n_down`` transposed convs, a 7x7 conv to RGB and tanh (reflection padding).
- :class:`UnetGenerator`: an encoder of ``num_downs`` 4x4 stride-2 convs and a mirrored
  decoder of transposed convs with skip connections, dropout in the three innermost decoder
  blocks, tanh.  The innermost encoder block has no norm (its output is as small as 1x1).
- :func:`patchgan70`: :class:`~posesynth.spade.discriminator.MultiscaleDiscriminator` with one
  scale and ``n_layers=4`` (NVlabs counts layers differently from pix2pix: its ``n_layers=4``
  is pix2pix's ``n_layers=3``, five 4x4 convs with strides 2, 2, 2, 1, 1), whose patches are
  70x70 pixels (:func:`receptive_field`).  It returns that class's format: a list (one scale)
  of lists of features, the last being the score map, so the GAN losses apply unchanged.

Input: ``(B, input_nc, H, W)`` (a stick figure in [-1, 1] has 3 channels; pose maps can be
given as well).  Output: ``(B, 3, H, W)`` in [-1, 1].
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from .discriminator import MultiscaleDiscriminator

__all__ = ["Pix2PixConfig", "ResnetGenerator", "UnetGenerator", "build_pix2pix", "patchgan70",
           "receptive_field", "unet_depth"]


def _norm(kind: str, ch: int) -> nn.Module:
    if kind == "instance":
        return nn.InstanceNorm2d(ch, affine=False)
    if kind == "batch":
        return nn.BatchNorm2d(ch)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm must be instance, batch or none, not {kind!r}")


def init_pix2pix(module: nn.Module, gain: float = 0.02) -> None:
    """pix2pix's initialisation: conv weights N(0, 0.02), batch-norm weights N(1, 0.02), zero biases."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, gain)
            nn.init.zeros_(m.bias)


class _ResBlock(nn.Module):
    def __init__(self, ch: int, norm: str, dropout: bool) -> None:
        super().__init__()
        layers = [nn.ReflectionPad2d(1), nn.Conv2d(ch, ch, 3), _norm(norm, ch), nn.ReLU(True)]
        if dropout:
            layers.append(nn.Dropout(0.5))
        layers += [nn.ReflectionPad2d(1), nn.Conv2d(ch, ch, 3), _norm(norm, ch)]
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class ResnetGenerator(nn.Module):
    """pix2pix/CycleGAN ResNet generator (``resnet_9blocks`` at 256 px, ``resnet_6blocks`` at 128).

    Args:
        input_nc: input channels (3 for a stick figure).
        ngf: width of the first conv; doubles with each downsampling.
        n_blocks: residual blocks at ``1 / 2**n_down`` resolution.
        n_down: stride-2 downsamplings (the size must be a multiple of ``2**n_down``).
        norm: ``instance`` (default), ``batch`` or ``none``.
        dropout: dropout inside the residual blocks.
    """

    def __init__(self, input_nc: int = 3, output_nc: int = 3, ngf: int = 64, n_blocks: int = 9, n_down: int = 2,
                 norm: str = "instance", dropout: bool = False) -> None:
        super().__init__()
        bias = norm != "batch"
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(input_nc, ngf, 7, bias=bias), _norm(norm, ngf),
                                   nn.ReLU(True)]
        ch = ngf
        for _ in range(n_down):
            layers += [nn.Conv2d(ch, ch * 2, 3, 2, 1, bias=bias), _norm(norm, ch * 2), nn.ReLU(True)]
            ch *= 2
        layers += [_ResBlock(ch, norm, dropout) for _ in range(n_blocks)]
        for _ in range(n_down):
            layers += [nn.ConvTranspose2d(ch, ch // 2, 3, 2, 1, output_padding=1, bias=bias), _norm(norm, ch // 2),
                       nn.ReLU(True)]
            ch //= 2
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ch, output_nc, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)
        self.multiple = 2 ** n_down
        init_pix2pix(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, input_nc, H, W)`` -> ``(B, 3, H, W)`` in [-1, 1]; H, W multiples of ``2**n_down``."""
        if x.shape[-2] % self.multiple or x.shape[-1] % self.multiple:
            raise ValueError(f"input size {tuple(x.shape[-2:])} must be a multiple of {self.multiple}")
        return self.model(x)


class _UnetBlock(nn.Module):
    """``x -> [x, up(sub(down(x)))]`` (the outermost block returns ``up(...)`` only)."""

    def __init__(self, outer: int, inner: int, input_nc: "int | None" = None, sub: "nn.Module | None" = None,
                 outermost: bool = False, innermost: bool = False, norm: str = "instance", dropout: bool = False,
                 output_nc: "int | None" = None) -> None:
        super().__init__()
        self.outermost = outermost
        bias = norm != "batch"
        input_nc = outer if input_nc is None else input_nc
        down = nn.Conv2d(input_nc, inner, 4, 2, 1, bias=bias)
        if outermost:
            up = nn.ConvTranspose2d(inner * 2, output_nc or outer, 4, 2, 1)
            layers = [down, sub, nn.ReLU(True), up, nn.Tanh()]
        elif innermost:
            up = nn.ConvTranspose2d(inner, outer, 4, 2, 1, bias=bias)
            layers = [nn.LeakyReLU(0.2, True), down, nn.ReLU(True), up, _norm(norm, outer)]
        else:
            up = nn.ConvTranspose2d(inner * 2, outer, 4, 2, 1, bias=bias)
            layers = [nn.LeakyReLU(0.2, True), down, _norm(norm, inner), sub, nn.ReLU(True), up, _norm(norm, outer)]
            if dropout:
                layers.append(nn.Dropout(0.5))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.model(x)
        return y if self.outermost else torch.cat([x, y], 1)


def unet_depth(size: tuple[int, int], max_downs: int = 8) -> int:
    """The number of U-Net downsamplings for ``(H, W)``: as many halvings as both sides allow
    (down to a 1-pixel side), at most ``max_downs`` (7 for 128x128, 8 for 256x256)."""
    n = 0
    h, w = size
    while n < max_downs and h % 2 == 0 and w % 2 == 0 and min(h, w) > 1:
        h, w, n = h // 2, w // 2, n + 1
    return n


class UnetGenerator(nn.Module):
    """pix2pix U-Net (``unet_128``: ``num_downs=7``, ``unet_256``: 8).

    Widths: ``ngf, 2ngf, 4ngf, 8ngf, 8ngf, ...``; dropout 0.5 in the decoder blocks of the
    three innermost ``8ngf`` levels when ``dropout`` (pix2pix's only source of noise).  The
    size must be a multiple of ``2**num_downs``; at least 5 levels.
    """

    def __init__(self, input_nc: int = 3, output_nc: int = 3, num_downs: int = 7, ngf: int = 64,
                 norm: str = "instance", dropout: bool = False) -> None:
        super().__init__()
        if num_downs < 5:
            raise ValueError(f"num_downs must be at least 5, not {num_downs}")
        blk = _UnetBlock(ngf * 8, ngf * 8, innermost=True, norm=norm)
        for _ in range(num_downs - 5):
            blk = _UnetBlock(ngf * 8, ngf * 8, sub=blk, norm=norm, dropout=dropout)
        blk = _UnetBlock(ngf * 4, ngf * 8, sub=blk, norm=norm)
        blk = _UnetBlock(ngf * 2, ngf * 4, sub=blk, norm=norm)
        blk = _UnetBlock(ngf, ngf * 2, sub=blk, norm=norm)
        self.model = _UnetBlock(output_nc, ngf, input_nc=input_nc, sub=blk, outermost=True, norm=norm,
                                output_nc=output_nc)
        self.multiple = 2 ** num_downs
        init_pix2pix(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, input_nc, H, W)`` -> ``(B, 3, H, W)`` in [-1, 1]; H, W multiples of ``2**num_downs``."""
        if x.shape[-2] % self.multiple or x.shape[-1] % self.multiple:
            raise ValueError(f"input size {tuple(x.shape[-2:])} must be a multiple of {self.multiple}")
        return self.model(x)


@dataclass
class Pix2PixConfig:
    """A pix2pix generator.

    Attributes:
        netg: ``resnet`` or ``unet``.
        input_nc: conditioning channels (3: the stick figure).
        size: ``(H, W)`` (fixes the U-Net depth when ``num_downs`` is 0).
        ngf: base width (pix2pix: 64).
        n_blocks: ResNet blocks (pix2pix: 9 at 256 px, 6 at 128 px; 0 picks by size).
        num_downs: U-Net depth (0: :func:`unet_depth` of ``size``).
        norm: ``instance``, ``batch`` or ``none``.
        dropout: pix2pix's dropout (U-Net decoder; ResNet blocks).
    """

    netg: str = "unet"
    input_nc: int = 3
    size: tuple[int, int] = (128, 128)
    ngf: int = 64
    n_blocks: int = 0
    num_downs: int = 0
    norm: str = "instance"
    dropout: bool = False


def build_pix2pix(cfg: Pix2PixConfig) -> nn.Module:
    """The generator ``cfg`` describes; its resolved config (block count or depth filled in) is
    kept as ``.cfg``, so ``Pix2PixConfig(**asdict(g.cfg))`` rebuilds it."""
    cfg = replace(cfg, size=tuple(cfg.size))
    if cfg.netg == "resnet":
        cfg = replace(cfg, n_blocks=cfg.n_blocks or (9 if min(cfg.size) >= 256 else 6))
        g: nn.Module = ResnetGenerator(cfg.input_nc, 3, cfg.ngf, cfg.n_blocks, 2, cfg.norm, cfg.dropout)
    elif cfg.netg == "unet":
        cfg = replace(cfg, num_downs=cfg.num_downs or unet_depth(cfg.size))
        g = UnetGenerator(cfg.input_nc, 3, cfg.num_downs, cfg.ngf, cfg.norm, cfg.dropout)
    else:
        raise ValueError(f"netg must be resnet or unet, not {cfg.netg!r}")
    g.cfg = cfg
    return g


def patchgan70(input_nc: int, ndf: int = 64, spectral: bool = True) -> MultiscaleDiscriminator:
    """The 70x70 PatchGAN: one scale, five 4x4 convs (strides 2, 2, 2, 1, 1), instance norm.

    ``input_nc`` is the conditioning's channels plus 3 (pix2pix's D sees condition and image
    concatenated).  Returns D outputs as ``[[f1, f2, f3, f4, score]]``.
    """
    return MultiscaleDiscriminator(input_nc, ndf, n_layers=4, num_d=1, spectral=spectral)


def receptive_field(module: nn.Module) -> int:
    """Receptive field in input pixels of one output pixel of a plain chain of convolutions
    (every ``Conv2d`` of ``module`` in registration order; square kernels and strides)."""
    r = 1
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    for m in reversed(convs):
        k, s = m.kernel_size[0], m.stride[0]
        r = r * s + (k - s)
    return r
