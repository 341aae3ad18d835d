"""Loading a trained generator from a ``train-gan`` run (its weights, layout, mode and pose-map
settings), and checking that it can render a dataset's poses."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..checkpoint import load_checkpoint, load_module
from ..datasets.layouts import KeypointLayout
from ..datasets.posemaps import PoseMapSpec
from ..errors import PosesynthError
from .generator import GeneratorConfig, SPADEGenerator

__all__ = ["load_generator", "check_compatible", "check_same_maps"]


def load_generator(run_dir: "str | Path", device: "str | torch.device" = "cpu", checkpoint: str = "latest",
                   channels_last: bool = True) -> tuple[SPADEGenerator, KeypointLayout, dict[str, Any]]:
    """The trained generator of a GAN run (eval mode), its layout and the checkpoint's metadata.

    ``meta["mode"]`` is ``full`` or ``inpaint``; ``meta["posemaps"]`` the run's
    :class:`~posesynth.datasets.posemaps.PoseMapSpec`.  ``channels_last`` (as in training)
    gives bit-identical outputs to the trained model."""
    run = Path(run_dir)
    if not run.exists():
        raise PosesynthError(f"{run}: no such GAN run folder")
    path = run / "checkpoints" / checkpoint
    tensors, meta = load_checkpoint(path)
    if meta.get("kind") != "posesynth-gan":
        raise PosesynthError(f"{path}: not a posesynth GAN checkpoint")
    g = dict(meta["generator"])
    g["size"] = tuple(g["size"])
    gen = SPADEGenerator(GeneratorConfig(**g))
    load_module(gen, tensors, "G", str(path))
    layout = KeypointLayout.from_dict(meta["layout"], source=str(path))
    meta.setdefault("mode", "full")
    meta["posemaps"] = PoseMapSpec.from_meta(meta).to_dict()
    gen = gen.to(device).eval()
    if channels_last:
        gen.to(memory_format=torch.channels_last)
    return gen, layout, meta


def check_compatible(gan_layout: KeypointLayout, data_layout: KeypointLayout, gan_path: str, data_path: str) -> None:
    """A clear error when a GAN run cannot render a dataset's poses."""
    if gan_layout.num_channels != data_layout.num_channels or gan_layout.keypoints != data_layout.keypoints:
        raise PosesynthError(
            f"{gan_path} was trained on layout '{gan_layout.name}' ({gan_layout.num_channels} channels) but "
            f"{data_path} is '{data_layout.name}' ({data_layout.num_channels} channels)")


def check_same_maps(a: PoseMapSpec, b: PoseMapSpec, a_name: str, b_name: str) -> None:
    """Two runs must draw the same pose maps (sigma, PAF width, stride) to work together."""
    if not a.same_maps(b):
        raise PosesynthError(f"{a_name} draws pose maps with sigma {a.sigma:g}, PAF width {a.paf_width:g}, stride "
                             f"{a.stride} but {b_name} with sigma {b.sigma:g}, PAF width {b.paf_width:g}, stride "
                             f"{b.stride}: use runs trained with the same --sigma/--paf-width")
