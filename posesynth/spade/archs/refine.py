"""``--arch spade --mode refine``: the SPADE generator corrects a training-free warp.

The generator takes the warp composite ``W``, the changed region ``M`` and the target pose
maps (``C + 3 + 1`` conditioning channels; ``W`` and ``M`` area-averaged at coarse levels) and
returns a residual ``R`` (:class:`~posesynth.spade.generator.GeneratorConfig` ``output
"residual"``), so the render is ``clamp(W + M * R, -1, 1)``.  R's last layer starts at zero:
an untrained refiner returns the warp exactly, and the learned renderer starts at the warp's
quality.  Everything happens on a square crop around M (``--crop-size``, 128 by default), so
cost follows the crop, not the frame.

Training is self-supervised on the user's own images, with samples prepared outside this
module (:mod:`posesynth.augment.refine` builds them and gives them to the trainer): the warp
round trip ``p -> p' -> p`` of an image carries the warp's artifacts at the original pose, and
the original crop is the truth; a share of erase-and-reconstruct samples (M filled, the arms
to be drawn back) teaches the fill.  Each item holds ``image`` (the truth crop), ``warped``
(``W``), ``region`` (``M``) and ``maps`` (the pose maps of the truth's pose), all at the crop
size.  D sees maps, M and the refined (or real) crop; L1 applies inside M.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ...datasets.layouts import KeypointLayout
from ...datasets.posemaps import PoseMapSpec
from ...datasets.torch_dataset import tensor_to_image
from ...errors import ConfigError
from ..generator import GeneratorConfig
from .base import RenderFn
from .spade import SpadeArch, maps_picture

__all__ = ["RefineArch", "refine_input", "refine_output"]


def refine_input(maps: torch.Tensor, warped: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """The refiner's conditioning ``(B, C + 4, S, S)``: pose maps, the warp composite and M."""
    return torch.cat([maps.to(warped.dtype), warped, region.to(warped.dtype)], 1)


def refine_output(residual: torch.Tensor, warped: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """``clamp(W + M * R, -1, 1)``: outside M (where M is 0) exactly the warp."""
    return torch.where(region > 0, (warped + region * residual).clamp(-1, 1), warped)


class RefineArch(SpadeArch):
    name = "spade"
    modes = ("refine",)
    needs_maps = True
    prepared_samples = True   # the trainer must be given the round-trip samples (augment builds them)
    columns = "pose maps | warp (W; M outlined) | refined W + M R | real"

    def __init__(self, cfg: Any, layout: KeypointLayout, spec: PoseMapSpec) -> None:
        super().__init__(cfg, layout, spec)
        if cfg.crop_size % 32 or cfg.crop_size < 64:
            raise ConfigError(f"crop_size must be a multiple of 32, at least 64, not {cfg.crop_size}")
        self.inpaint = False
        self.columns = RefineArch.columns

    def generator_config(self) -> GeneratorConfig:
        c, n = self.cfg, self.layout.num_channels
        return GeneratorConfig(n + 4, (c.crop_size, c.crop_size), c.ngf, "normal", c.norm, True, c.z_dim,
                               area_channels=4, hidden=c.spade_hidden, output="residual")

    def d_condition_channels(self) -> int:
        return self.layout.num_channels + 1

    def prepare(self, b: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        if "warped" not in b or "region" not in b:
            raise ConfigError("refine mode trains on warp round trips: the batches must hold 'warped' and 'region' "
                              "(posesynth.augment.refine builds them; use posesynth train-gan --mode refine)")
        return b

    def generate(self, G: nn.Module, b: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x = refine_input(b["maps"], b["warped"], b["region"])
        if self.cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out = refine_output(G(x), b["warped"], b["region"])
        return out, out

    def d_input(self, b: dict[str, torch.Tensor], image: torch.Tensor) -> torch.Tensor:
        return torch.cat([b["maps"], b["region"].to(image.dtype), image], 1)

    def l1_region(self, b: dict[str, torch.Tensor]) -> "torch.Tensor | None":
        return b["region"]

    def gallery_columns(self, b: dict[str, torch.Tensor], fake: torch.Tensor) -> list[np.ndarray]:
        warped = tensor_to_image(b["warped"].float())
        edge = (b["region"][:, 0] > 0).cpu().numpy()
        inner = np.zeros_like(edge)
        inner[:, 1:-1, 1:-1] = edge[:, 1:-1, 1:-1] & edge[:, :-2, 1:-1] & edge[:, 2:, 1:-1] & edge[:, 1:-1, :-2] \
            & edge[:, 1:-1, 2:]
        warped[edge & ~inner] = (255, 255, 0)   # M's outline
        return [maps_picture(b["maps"], self.layout), warped, tensor_to_image(fake.float()),
                tensor_to_image(b["image"].float())]

    def meta(self) -> dict[str, Any]:
        return {"crop": {"size": int(self.cfg.crop_size), "margin": float(self.cfg.crop_margin)}}

    @classmethod
    def make_render(cls, generator: nn.Module, layout: KeypointLayout, spec: PoseMapSpec,
                    meta: dict[str, Any]) -> RenderFn:
        raise ConfigError("a refine-mode run corrects a warp of a given image and cannot draw a whole frame from a "
                          "skeleton: use it as --renderer refine --gan RUN")

    @classmethod
    def describe(cls, cfg: Any) -> str:
        return f"refine mode, {cfg.crop_size} px crops"
