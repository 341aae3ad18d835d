"""What every generator architecture of ``train-gan`` provides to the one trainer.

The trainer (:class:`~posesynth.spade.trainer.GANTrainer`) keeps the loop, the optimisers,
checkpoints, logging, the gallery and the losses every architecture shares (adversarial,
feature matching, VGG, pose consistency, L1).  An architecture (:class:`GeneratorArch`)
builds its generator and discriminator, assembles their inputs from a batch, says where L1
applies, and lays out its gallery; it also rebuilds a saved generator and turns it into a
``render(keypoints, size)`` function.  One module per architecture:

- :mod:`.spade` (``spade``: full and inpaint modes), :mod:`.refine` (``spade`` in refine mode),
- :mod:`.pix2pix`, :mod:`.vanilla`, :mod:`.nearest` (the classic baselines).

Batches (see :class:`~posesynth.datasets.torch_dataset.PoseMapDataset`) hold ``image``
``(B, 3, H, W)`` in [-1, 1], ``keypoints`` ``(B, P, K, 3)`` in pixels, and ``maps`` (pose maps,
for the architectures with :attr:`GeneratorArch.needs_maps`), on the training device.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ...datasets.layouts import KeypointLayout
from ...datasets.posemaps import PoseMapSpec
from ...datasets.torch_dataset import tensor_to_image
from ...errors import ConfigError
from ..discriminator import MultiscaleDiscriminator

__all__ = ["GeneratorArch", "RenderFn"]

#: ``render(keypoints (B, P, K, 3) in pixels of size, size) -> (B, 3, H, W)`` in [-1, 1].
RenderFn = Callable[[torch.Tensor, "tuple[int, int]"], torch.Tensor]


class GeneratorArch:
    """One generator architecture (subclasses set the class attributes and the methods).

    Args:
        cfg: the run's resolved :class:`~posesynth.spade.trainer.GANConfig`.
        layout, spec: the data's layout and the run's pose-map settings.
    """

    name = "arch"
    modes: tuple[str, ...] = ("full",)
    learned = True            # trained by gradient steps (``nearest`` is not)
    needs_maps = False        # the batches must carry full-resolution pose maps
    prepared_samples = False  # trains only on samples given to the trainer (``dataset=``), not on plain images
    columns = "conditioning | generated | real"   # the gallery's columns
    #: The values this architecture gives the options a run leaves unset (``None`` in GANConfig).
    defaults: dict[str, Any] = {}

    def __init__(self, cfg: Any, layout: KeypointLayout, spec: PoseMapSpec) -> None:
        if cfg.mode not in self.modes:
            raise ConfigError(f"--mode {cfg.mode} is not for --arch {self.name} (its modes: {', '.join(self.modes)})")
        self.cfg, self.layout, self.spec = cfg, layout, spec

    # ---- building ------------------------------------------------------------------------
    def build_generator(self) -> nn.Module:
        raise NotImplementedError

    def d_condition_channels(self) -> int:
        """Channels D sees beside the image."""
        raise NotImplementedError

    def build_discriminator(self) -> nn.Module:
        c = self.cfg
        return MultiscaleDiscriminator(self.d_condition_channels() + 3, c.ndf, c.n_layers_d, c.num_d)

    def generator_meta(self, generator: nn.Module) -> dict[str, Any]:
        """The JSON-able description a checkpoint records to rebuild the generator."""
        raise NotImplementedError

    @classmethod
    def rebuild(cls, meta: dict[str, Any], tensors: dict[str, torch.Tensor], path: str) -> nn.Module:
        """The saved generator of a checkpoint (weights loaded)."""
        raise NotImplementedError

    def meta(self) -> dict[str, Any]:
        """Anything else the checkpoint records for this architecture (e.g. the region spec)."""
        return {}

    # ---- a training step -----------------------------------------------------------------
    def prepare(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        """Add what this architecture's G and D take (conditioning, regions) to a device batch,
        in place; returns it.  Called once per step and per gallery."""
        return batch

    def generate(self, G: nn.Module, b: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(raw generator output, the image D and the losses see)``."""
        raise NotImplementedError

    def d_input(self, b: dict[str, torch.Tensor], image: torch.Tensor) -> torch.Tensor:
        """D's input for ``image`` (the condition and the image, concatenated on channels)."""
        raise NotImplementedError

    def l1_region(self, b: dict[str, torch.Tensor]) -> "torch.Tensor | None":
        """Where L1 to the real image applies: ``(B, 1, H, W)`` weights, or ``None`` for the
        whole image."""
        return None

    # ---- gallery -------------------------------------------------------------------------
    def gallery_columns(self, b: dict[str, torch.Tensor], fake: torch.Tensor) -> list[np.ndarray]:
        """``(B, H, W, 3)`` uint8 columns of the gallery (conditioning first, real last)."""
        return [tensor_to_image(self.condition_picture(b)), tensor_to_image(fake.float()),
                tensor_to_image(b["image"].float())]

    def condition_picture(self, b: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    # ---- using a trained generator -------------------------------------------------------
    @classmethod
    def make_render(cls, generator: nn.Module, layout: KeypointLayout, spec: PoseMapSpec,
                    meta: dict[str, Any]) -> RenderFn:
        """The trained generator as ``render(keypoints, size)``: a whole image from a skeleton."""
        raise NotImplementedError

    @classmethod
    def describe(cls, cfg: Any) -> str:
        return cls.name
