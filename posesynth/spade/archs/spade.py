"""``--arch spade``: the SPADE generator on pose maps against the multi-scale PatchGAN.

- ``full`` mode: ``G(maps)`` draws the whole image; D sees the maps and the image.
- ``inpaint`` mode (region-preserving): G also takes the image with a region M removed and
  M's mask (``C + 3 + 1`` conditioning channels, the last four area-averaged at coarse
  levels), and its output is composited, ``M * G + (1 - M) * image``; D sees maps, M and the
  composite; L1 applies inside M.  M (:func:`inpaint_region`) covers the arms each image has,
  plus, for a share ``extra_regions`` of the images, the arms at random plausible positions,
  so the generator learns both to erase an arm and to draw one.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
from torch import nn

from ...checkpoint import load_module
from ...datasets.geometry import RegionSpec, limb_region, random_arms
from ...datasets.layouts import KeypointLayout
from ...datasets.posemaps import PoseMapSpec
from ...datasets.torch_dataset import tensor_to_image
from ...datasets.visualize import maps_to_rgb
from ..baselines import keypoints_to_maps
from ..generator import GeneratorConfig, SPADEGenerator
from .base import GeneratorArch, RenderFn

__all__ = ["SpadeArch", "inpaint_region", "maps_picture"]


def inpaint_region(keypoints: np.ndarray, layout: KeypointLayout, size: tuple[int, int], rng: np.random.Generator,
                   extra: float = 0.5, spec: RegionSpec = RegionSpec(), device: "str | torch.device" = "cpu"
                   ) -> torch.Tensor:
    """The self-supervised training region M ``(B, 1, H, W)``: every labelled arm of each image,
    plus, for a share ``extra`` of the images, the arms at random plausible positions
    (:func:`~posesynth.datasets.geometry.random_arms`, within the joint limits)."""
    kp = np.asarray(keypoints, np.float32)
    own = limb_region(kp, None, layout, size, spec, device)
    pick = rng.random(kp.shape[0]) < extra
    if not pick.any():
        return own
    moved = np.stack([random_arms(k, layout, rng) if pk else k for k, pk in zip(kp, pick)])
    return torch.maximum(own, limb_region(kp, moved, layout, size, spec, device))


def maps_picture(maps: torch.Tensor, layout: KeypointLayout) -> np.ndarray:
    """``(B, C, H, W)`` pose maps -> ``(B, H, W, 3)`` uint8 pictures."""
    return np.stack([maps_to_rgb(m.float().cpu().numpy(), layout) for m in maps])


def spade_generator(meta: dict[str, Any]) -> SPADEGenerator:
    g = dict(meta)
    g["size"] = tuple(g["size"])
    return SPADEGenerator(GeneratorConfig(**g))


class SpadeArch(GeneratorArch):
    name = "spade"
    modes = ("full", "inpaint")
    needs_maps = True
    defaults = dict(ngf=32, num_d=2, lambda_feat=10.0, lambda_vgg=10.0, lambda_l1=20.0, lr_g=1e-4, lr_d=4e-4,
                    beta1=0.0, beta2=0.9)

    def __init__(self, cfg: Any, layout: KeypointLayout, spec: PoseMapSpec) -> None:
        super().__init__(cfg, layout, spec)
        self.inpaint = cfg.mode == "inpaint"
        self.region_spec = RegionSpec(radius=cfg.region_radius)
        self.columns = ("pose maps | input with the region removed | generated (composite) | real" if self.inpaint
                        else "pose maps | generated | real")

    def generator_config(self) -> GeneratorConfig:
        c, n = self.cfg, self.layout.num_channels
        return GeneratorConfig(n + (4 if self.inpaint else 0), tuple(c.size), c.ngf, "normal", c.norm, True, c.z_dim,
                               area_channels=4 if self.inpaint else 0, hidden=c.spade_hidden)

    def build_generator(self) -> nn.Module:
        return SPADEGenerator(self.generator_config())

    def d_condition_channels(self) -> int:
        return self.layout.num_channels + (1 if self.inpaint else 0)

    def generator_meta(self, generator: nn.Module) -> dict[str, Any]:
        return dataclasses.asdict(generator.cfg)

    def meta(self) -> dict[str, Any]:
        return {"region": dataclasses.asdict(self.region_spec)}

    @classmethod
    def rebuild(cls, meta: dict[str, Any], tensors: dict[str, torch.Tensor], path: str) -> nn.Module:
        gen = spade_generator(meta["generator"])
        load_module(gen, tensors, "G", path)
        return gen

    def prepare(self, b: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        if self.inpaint and "region" not in b:
            rng = np.random.default_rng([self.cfg.seed, step, 17])
            b["region"] = inpaint_region(b["keypoints"].cpu().numpy(), self.layout, tuple(self.cfg.size), rng,
                                         self.cfg.extra_regions, self.region_spec, device=b["image"].device)
        return b

    def generate(self, G: nn.Module, b: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        maps, real = b["maps"], b["image"]
        if not self.inpaint:
            fake = G(maps)
            return fake, fake
        region = b["region"]
        hole = (region > 0).to(real.dtype)
        x = torch.cat([maps, real * (1 - hole), hole], 1)
        if self.cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        fake = G(x)
        return fake, region * fake + (1 - region) * real

    def d_input(self, b: dict[str, torch.Tensor], image: torch.Tensor) -> torch.Tensor:
        parts = [b["maps"]] + ([b["region"].to(image.dtype)] if self.inpaint else []) + [image]
        return torch.cat(parts, 1)

    def l1_region(self, b: dict[str, torch.Tensor]) -> "torch.Tensor | None":
        return b["region"] if self.inpaint else None

    def gallery_columns(self, b: dict[str, torch.Tensor], fake: torch.Tensor) -> list[np.ndarray]:
        cols = [maps_picture(b["maps"], self.layout)]
        if self.inpaint:
            hole = (b["region"] > 0).float()
            cols.append(tensor_to_image(b["image"].float() * (1 - hole)))
        return cols + [tensor_to_image(fake.float()), tensor_to_image(b["image"].float())]

    @classmethod
    def make_render(cls, generator: nn.Module, layout: KeypointLayout, spec: PoseMapSpec,
                    meta: dict[str, Any]) -> RenderFn:
        dev = next(generator.parameters()).device

        @torch.no_grad()
        def render(keypoints: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
            x = keypoints_to_maps(torch.as_tensor(keypoints).float().to(dev), layout, size, spec)
            return generator(x.contiguous(memory_format=torch.channels_last))

        return render

    @classmethod
    def describe(cls, cfg: Any) -> str:
        return f"{cfg.mode} mode"
