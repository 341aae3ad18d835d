"""``--arch nearest``: no training.  :meth:`NearestArch.index` stores every training frame as
the other architectures see it without augmentation (fitted to ``--size``) with its skeleton;
the render of a skeleton is the closest training frame (KD-tree,
:mod:`~posesynth.spade.nearest`).  Full mode only."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ...datasets.layouts import KeypointLayout
from ...datasets.posemaps import PoseMapSpec
from ...datasets.torch_dataset import PoseMapDataset, tensor_to_image
from ..baselines import d_condition
from ..nearest import NearestNeighbourGenerator
from .base import GeneratorArch, RenderFn
from .pix2pix import PIX2PIX_DEFAULTS

__all__ = ["NearestArch"]


class NearestArch(GeneratorArch):
    name = "nearest"
    learned = False
    defaults = PIX2PIX_DEFAULTS
    columns = "stick figure | closest training frame | real"

    def build_generator(self) -> "nn.Module | None":
        return None   # built from the data by :meth:`index`

    def build_discriminator(self) -> None:
        return None

    def index(self, dataset: PoseMapDataset, device: torch.device, progress: bool = True
              ) -> NearestNeighbourGenerator:
        """Every frame of ``dataset``'s source, fitted as ``dataset`` fits them, without augmentation."""
        plain = PoseMapDataset(dataset.source, tuple(self.cfg.size), None, stride=self.spec.stride, spec=self.spec,
                               with_maps=False, max_people=dataset.max_people, fit=dataset.fit)
        frames, kps = [], []
        for i in tqdm(range(len(plain)), desc="nearest: index frames", unit="frame", disable=not progress,
                      dynamic_ncols=True):
            item = plain[i]
            frames.append(tensor_to_image(item["image"]))
            kps.append(item["keypoints"].numpy())
        return NearestNeighbourGenerator(np.stack(frames), np.stack(kps), self.layout).to(device)

    def generator_meta(self, generator: nn.Module) -> dict[str, Any]:
        return {"size": list(generator.size), "missing_weight": generator.missing_weight,
                "frames": len(generator.frames)}

    @classmethod
    def rebuild(cls, meta: dict[str, Any], tensors: dict[str, torch.Tensor], path: str) -> nn.Module:
        return NearestNeighbourGenerator.from_tensors(tensors, meta, path)

    def generate(self, G: nn.Module, b: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        fake = G(b["keypoints"])
        return fake, fake

    def condition_picture(self, b: dict[str, torch.Tensor]) -> torch.Tensor:
        return d_condition("vanilla", b, self.layout).float()

    @classmethod
    def make_render(cls, generator: nn.Module, layout: KeypointLayout, spec: PoseMapSpec,
                    meta: dict[str, Any]) -> RenderFn:
        generator.eval()
        dev = next(generator.buffers()).device

        @torch.no_grad()
        def render(keypoints: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
            return generator(torch.as_tensor(keypoints).float().to(dev))

        return render
