"""``--arch pix2pix``: a U-Net (``--netg unet``) or ResNet-block (``--netg resnet``) generator
on the stick-figure image, against the 70x70 PatchGAN (``num_d`` 1, ``n_layers_d`` 4) on
stick figure + image; L1 x 100 + GAN loss, as in pix2pix.  Full mode only."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...checkpoint import load_module
from ...datasets.layouts import KeypointLayout
from ...datasets.posemaps import PoseMapSpec
from ...errors import PosesynthError
from ..baselines import build_discriminator, build_generator, d_condition, generator_config, generator_from_config, generator_input, \
    make_render
from .base import GeneratorArch, RenderFn

__all__ = ["Pix2PixArch", "PIX2PIX_DEFAULTS"]

#: pix2pix's settings: one 70x70 PatchGAN (``num_d`` 1 with ``n_layers_d`` 4), L1 x 100, no
#: feature matching and no VGG, Adam 2e-4 with betas 0.5 and 0.999.
PIX2PIX_DEFAULTS = dict(ngf=64, num_d=1, lambda_feat=0.0, lambda_vgg=0.0, lambda_l1=100.0, lr_g=2e-4, lr_d=2e-4,
                        beta1=0.5, beta2=0.999)


class Pix2PixArch(GeneratorArch):
    name = "pix2pix"
    columns = "stick figure | generated | real"
    defaults = PIX2PIX_DEFAULTS

    def build_generator(self) -> nn.Module:
        c = self.cfg
        return build_generator(self.name, self.layout, tuple(c.size), c.ngf, c.netg, c.norm, **self.generator_kw())

    def generator_kw(self) -> dict[str, Any]:
        return {}

    def d_condition_channels(self) -> int:
        return 3   # the stick figure

    def build_discriminator(self) -> nn.Module:
        c = self.cfg
        return build_discriminator(self.name, self.layout, c.ndf, c.n_layers_d, c.num_d)

    def generator_meta(self, generator: nn.Module) -> dict[str, Any]:
        return generator_config(self.name, generator)

    @classmethod
    def rebuild(cls, meta: dict[str, Any], tensors: dict[str, torch.Tensor], path: str) -> nn.Module:
        try:
            gen = generator_from_config(cls.name, meta["generator"])
        except (TypeError, ValueError, KeyError) as e:
            raise PosesynthError(f"{path}: cannot rebuild the {cls.name} generator ({e})") from None
        load_module(gen, tensors, "G", path)
        return gen

    def prepare(self, b: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        """The generator's input ``g_in`` and D's condition ``d_cond`` (the stick figure), drawn
        once per batch."""
        if "g_in" not in b:
            b["g_in"] = generator_input(self.name, b, self.layout)
            b["d_cond"] = d_condition(self.name, b, self.layout, b["g_in"])
            if self.cfg.channels_last:
                b["d_cond"] = b["d_cond"].contiguous(memory_format=torch.channels_last)
                if b["g_in"].dim() == 4:
                    b["g_in"] = b["g_in"].contiguous(memory_format=torch.channels_last)
        return b

    def generate(self, G: nn.Module, b: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        fake = G(b["g_in"])
        return fake, fake

    def d_input(self, b: dict[str, torch.Tensor], image: torch.Tensor) -> torch.Tensor:
        return torch.cat([b["d_cond"], image], 1)

    def condition_picture(self, b: dict[str, torch.Tensor]) -> torch.Tensor:
        return b["d_cond"].float()

    @classmethod
    def make_render(cls, generator: nn.Module, layout: KeypointLayout, spec: PoseMapSpec,
                    meta: dict[str, Any]) -> RenderFn:
        return make_render(cls.name, generator, layout, spec, channels_last=True)

    @classmethod
    def describe(cls, cfg: Any) -> str:
        return f"{cls.name}, {cfg.netg}"
