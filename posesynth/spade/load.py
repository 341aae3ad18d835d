"""Loading a trained generator from a ``train-gan`` run (its weights, layout, arch, mode and
pose-map settings), and checking that it can render a dataset's poses.

:func:`load_generator` loads any arch (``meta["arch"]``: ``spade``, ``pix2pix``, ``vanilla``
or ``nearest``); :func:`load_render` wraps it as ``render(keypoints, size)``, the one
interface ``transfer`` and ``evaluate-generator`` use for every arch."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..checkpoint import load_checkpoint
from ..datasets.layouts import KeypointLayout
from ..datasets.posemaps import PoseMapSpec
from ..errors import ConfigError, PosesynthError
from .archs import arch_class

__all__ = ["load_generator", "check_resumable", "load_render", "input_matrix", "check_compatible", "check_same_maps", "RenderFn"]

#: ``render(keypoints (B, P, K, 3) in pixels of the generator's (H, W), size) -> (B, 3, H, W)`` in [-1, 1].
RenderFn = Callable[[torch.Tensor, tuple[int, int]], torch.Tensor]


def load_generator(run_dir: "str | Path", device: "str | torch.device" = "cpu", checkpoint: str = "latest",
                   channels_last: bool = True) -> tuple[nn.Module, KeypointLayout, dict[str, Any]]:
    """The trained generator of a GAN run (eval mode), its layout and the checkpoint's metadata.

    ``meta["arch"]`` is ``spade`` (a :class:`SPADEGenerator` on pose maps; runs from before
    the arch was recorded are spade), ``pix2pix`` (on stick figures), ``vanilla`` (on the
    skeleton vector) or ``nearest`` (a :class:`~posesynth.spade.nearest.NearestNeighbourGenerator`);
    ``meta["mode"]`` is ``full`` or ``inpaint``; ``meta["posemaps"]`` the run's
    :class:`~posesynth.datasets.posemaps.PoseMapSpec`.  Code that feeds pose maps to the
    generator needs ``meta["arch"] == "spade"``; :func:`load_render` takes keypoints for any
    arch.  ``channels_last`` (as in training) gives bit-identical outputs to the trained model."""
    run = Path(run_dir)
    if not run.exists():
        raise PosesynthError(f"{run}: no such GAN run folder")
    path = run / "checkpoints" / checkpoint
    tensors, meta = load_checkpoint(path)
    if meta.get("kind") != "posesynth-gan":
        raise PosesynthError(f"{path}: not a posesynth GAN checkpoint")
    arch = meta.setdefault("arch", "spade")
    meta.setdefault("mode", "full")
    try:
        cls = arch_class(arch, meta["mode"])
    except PosesynthError:
        raise PosesynthError(f"{path}: unknown generator arch {arch!r} in mode {meta['mode']!r} (a newer posesynth's "
                             "run?)") from None
    gen = cls.rebuild(meta, tensors, str(path))
    layout = KeypointLayout.from_dict(meta["layout"], source=str(path))
    meta["posemaps"] = PoseMapSpec.from_meta(meta).to_dict()
    gen = gen.to(device).eval()
    if channels_last and cls.learned:
        gen.to(memory_format=torch.channels_last)
    return gen, layout, meta


def load_render(run_dir: "str | Path", device: "str | torch.device" = "cpu", checkpoint: str = "latest"
                ) -> tuple[RenderFn, KeypointLayout, dict[str, Any]]:
    """Any arch's trained generator as ``render(keypoints, size)`` (see :data:`RenderFn`), with
    its layout and metadata (:func:`load_generator`'s).

    ``size`` must be the generator's ``meta["generator"]["size"]``; the keypoints are in pixels
    of that image (the run's training frames were fitted to it as ``meta["fit"]`` says,
    ``letterbox`` by default).  An inpaint-mode spade run redraws a region of a given image
    and cannot draw a whole frame from a skeleton: it is refused."""
    gen, layout, meta = load_generator(run_dir, device)
    if meta["mode"] != "full":
        raise PosesynthError(f"{run_dir} is an {meta['mode']}-mode run: it redraws part of an image and cannot draw "
                             "a whole frame from a skeleton; use a full-mode run")
    size = tuple(int(v) for v in meta["generator"]["size"])
    inner = arch_class(meta["arch"], meta["mode"]).make_render(gen, layout, PoseMapSpec.from_dict(meta["posemaps"]),
                                                                meta)

    def render(keypoints: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
        if tuple(out_size) != size:
            raise PosesynthError(f"{run_dir} draws {size[0]}x{size[1]} images, not {out_size[0]}x{out_size[1]}")
        return inner(keypoints, size)

    return render, layout, meta


def input_matrix(meta: dict[str, Any], frame_size: tuple[int, int]) -> np.ndarray:
    """The 2x3 matrix from a training frame of ``frame_size`` ``(H, W)`` to the generator's
    pixels, as the run fitted its training frames (``meta["fit"]``, letterbox by default)."""
    from ..datasets.transforms import fit_matrix

    return fit_matrix(tuple(frame_size), tuple(int(v) for v in meta["generator"]["size"]), meta.get("fit", "letterbox"))


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


def check_resumable(meta: dict[str, Any], layout: KeypointLayout, arch: str, mode: str, path: str) -> None:
    """A checkpoint (``meta``) can continue as a run of ``arch`` in ``mode`` on data in ``layout``."""
    if meta.get("layout", {}).get("keypoints") != list(layout.keypoints):
        raise ConfigError(f"{path}: trained on layout '{meta.get('layout', {}).get('name')}', the data is "
                             f"'{layout.name}'")
    if meta.get("mode", "full") != mode:
        raise ConfigError(f"{path}: a {meta.get('mode', 'full')}-mode run cannot continue in {mode} mode")
    if meta.get("arch", "spade") != arch:
        raise ConfigError(f"{path}: a {meta.get('arch', 'spade')} run cannot continue as --arch {arch}")
