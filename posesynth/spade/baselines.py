"""The generators of ``train-gan --arch`` behind one interface, so the trainer, ``transfer`` and
``evaluate-generator`` treat them alike.

=========  ===========================================  ==========================================
arch       generator input (:func:`generator_input`)     discriminator condition (:func:`d_condition`)
=========  ===========================================  ==========================================
spade      ``batch["maps"]`` (B, C, H, W) pose maps       the same maps (multi-scale PatchGAN)
pix2pix    stick figure (B, 3, H, W) in [-1, 1]           the stick figure (one-scale 70x70 PatchGAN)
vanilla    keypoint vector (B, 3K)                        the stick figure (70x70 PatchGAN)
nearest    ``batch["keypoints"]`` (B, P, K, 3)            none: not trained
=========  ===========================================  ==========================================

Every input is computed from a :class:`~posesynth.datasets.torch_dataset.PoseMapDataset`
batch (``maps``, ``keypoints`` in pixels of the ``(H, W)`` training size), on the batch's
device.  :func:`make_render` wraps a trained generator as a ``render(keypoints, size)``
callable (:data:`posesynth.augment.transfer.RenderFn`'s signature) that builds the same input
from keypoints alone, which is what ``transfer`` and ``evaluate-generator`` need.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..datasets.layouts import KeypointLayout
from ..datasets.posemaps import PoseMapSpec, render_pose_maps
from ..datasets.stickfigure import render_stick_figures
from ..errors import ConfigError
from .discriminator import MultiscaleDiscriminator
from .pix2pix import Pix2PixConfig, build_pix2pix, patchgan70
from .vanilla import VanillaConfig, VanillaGenerator, keypoint_vector

__all__ = ["ARCHS", "LEARNED_ARCHS", "build_generator", "build_discriminator", "generator_input", "d_condition",
           "make_render", "keypoints_to_maps", "generator_config", "generator_from_config"]

ARCHS = ("spade", "pix2pix", "vanilla", "nearest")
LEARNED_ARCHS = ("spade", "pix2pix", "vanilla")


def _check(arch: str) -> None:
    if arch not in ARCHS:
        raise ConfigError(f"arch must be one of {', '.join(ARCHS)}, not {arch!r}")


def build_generator(arch: str, layout: KeypointLayout, size: tuple[int, int], ngf: int = 64, netg: str = "unet",
                    norm: str = "instance", **kw: Any) -> nn.Module:
    """A new generator for ``arch`` (``spade`` stays the trainer's own ``SPADEGenerator``;
    ``nearest`` is built from data with ``NearestNeighbourGenerator.from_source``).

    ``netg``: ``unet`` or ``resnet`` for pix2pix.  ``kw`` go to :class:`Pix2PixConfig` /
    :class:`VanillaConfig` (e.g. ``n_blocks``, ``dropout``, ``n_up``).
    """
    _check(arch)
    if arch == "pix2pix":
        return build_pix2pix(Pix2PixConfig(netg=netg, input_nc=3, size=tuple(size), ngf=ngf, norm=norm, **kw))
    if arch == "vanilla":
        return VanillaGenerator(VanillaConfig(layout.num_keypoints, tuple(size), ngf, norm=norm, **kw))
    raise ConfigError(f"build_generator makes pix2pix and vanilla generators, not {arch!r}")


def generator_config(arch: str, generator: nn.Module) -> dict[str, Any]:
    """The JSON-able config of a pix2pix or vanilla generator (for a checkpoint's metadata)."""
    _check(arch)
    d = dataclasses.asdict(generator.cfg)
    d["size"] = list(d["size"])
    return d


def generator_from_config(arch: str, config: dict[str, Any]) -> nn.Module:
    """Rebuild (untrained) the generator :func:`generator_config` described; load its weights after."""
    _check(arch)
    c = dict(config)
    c["size"] = tuple(c["size"])
    if arch == "pix2pix":
        return build_pix2pix(Pix2PixConfig(**c))
    if arch == "vanilla":
        return VanillaGenerator(VanillaConfig(**c))
    raise ConfigError(f"generator_from_config rebuilds pix2pix and vanilla generators, not {arch!r}")


def build_discriminator(arch: str, layout: KeypointLayout, ndf: int = 64, n_layers: int = 4, num_d: int = 1
                        ) -> nn.Module:
    """The PatchGAN on ``[stick figure, image]`` for ``pix2pix`` and ``vanilla``: pix2pix's 70x70
    one (:func:`patchgan70`) with the defaults, else ``num_d`` scales of ``n_layers``."""
    _check(arch)
    if arch in ("pix2pix", "vanilla"):
        if n_layers == 4 and num_d == 1:
            return patchgan70(3 + 3, ndf)
        return MultiscaleDiscriminator(3 + 3, ndf, n_layers, num_d)
    raise ConfigError(f"build_discriminator is for pix2pix and vanilla, not {arch!r} (spade keeps its "
                      "MultiscaleDiscriminator; nearest has none)")


def generator_input(arch: str, batch: dict[str, torch.Tensor], layout: KeypointLayout) -> torch.Tensor:
    """What ``G`` takes for a batch: see the table in the module docstring."""
    _check(arch)
    if arch == "spade":
        return batch["maps"]
    kp = batch["keypoints"]
    size = tuple(batch["image"].shape[-2:]) if "image" in batch else tuple(batch["maps"].shape[-2:])
    if arch == "pix2pix":
        return render_stick_figures(kp, layout, size, device=kp.device)
    if arch == "vanilla":
        return keypoint_vector(kp, size).to(kp.device)
    return kp


def d_condition(arch: str, batch: dict[str, torch.Tensor], layout: KeypointLayout,
                g_input: "torch.Tensor | None" = None) -> "torch.Tensor | None":
    """What ``D`` sees beside the image (concatenated on channels); ``g_input`` (this batch's
    :func:`generator_input`) is reused where it is the same tensor."""
    _check(arch)
    if arch == "spade":
        return batch["maps"]
    if arch == "nearest":
        return None
    if arch == "pix2pix" and g_input is not None:
        return g_input
    size = tuple(batch["image"].shape[-2:])
    return render_stick_figures(batch["keypoints"], layout, size, device=batch["keypoints"].device)


def keypoints_to_maps(keypoints: torch.Tensor, layout: KeypointLayout, size: tuple[int, int],
                      spec: PoseMapSpec = PoseMapSpec()) -> torch.Tensor:
    """``(B, P, K, 3)`` keypoints in pixels of ``size`` -> ``(B, C, H, W)`` pose maps (empty masks)."""
    kp = keypoints.detach().float().cpu().numpy()
    maps = np.stack([render_pose_maps(k, layout, tuple(size), tuple(size), None, spec) for k in kp])
    return torch.from_numpy(maps).to(keypoints.device)


def make_render(arch: str, generator: nn.Module, layout: KeypointLayout, spec: PoseMapSpec = PoseMapSpec(),
                channels_last: bool = False) -> Callable[[torch.Tensor, tuple[int, int]], torch.Tensor]:
    """``render(keypoints (B, P, K, 3) in pixels of size, size) -> (B, 3, H, W)`` in [-1, 1] for a
    trained generator of ``arch`` (eval mode, no gradients; the input goes to the generator's device)."""
    _check(arch)
    generator.eval()
    try:
        dev = next(generator.buffers() if arch == "nearest" else generator.parameters()).device
    except StopIteration:
        dev = torch.device("cpu")

    @torch.no_grad()
    def render(keypoints: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        kp = torch.as_tensor(keypoints).float().to(dev)
        if arch == "spade":
            x = keypoints_to_maps(kp, layout, size, spec)
        elif arch == "pix2pix":
            x = render_stick_figures(kp, layout, tuple(size), device=dev)
        elif arch == "vanilla":
            x = keypoint_vector(kp, tuple(size))
        else:
            return generator(kp)
        if channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return generator(x)

    return render
