"""PVT v2 backbone from timm, returning the four pyramid levels (strides 4, 8, 16, 32).

``pvt_v2_b1`` has the original NADS-Net's PVT-tiny widths 64/128/320/512; ``pvt_v2_b0``
(32/64/160/256) is a small option.  ImageNet weights are used when the user has them:
``pretrained="auto"`` looks, without going online, in the local Hugging Face hub cache, which is
where timm keeps the weights it downloads (``~/.cache/huggingface/hub/models--timm--pvt_v2_b1.in1k``,
or under ``$HF_HUB_CACHE``); a file path loads that file (timm's ``model.safetensors`` or
``pytorch_model.bin`` of ``timm/<name>.in1k``); otherwise the backbone starts from random
weights and says so once, naming the folder looked in and the file ``--pretrained`` takes.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError

__all__ = ["PVTBackbone", "BACKBONES"]

log = logging.getLogger(__name__)
BACKBONES = ("pvt_v2_b0", "pvt_v2_b1", "pvt_v2_b2")


def _hub_repo(name: str) -> "str | None":
    """The Hugging Face repository timm downloads ``name``'s ImageNet weights from (``timm/<name>.in1k``)."""
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    return cfg.hf_hub_id if cfg is not None else None


def _cached_weights(name: str) -> "Path | None":
    """timm's ImageNet weights for ``name`` if they are in the local Hugging Face hub cache (no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    repo = _hub_repo(name)
    for fname in ("model.safetensors", "pytorch_model.bin"):
        hit = try_to_load_from_cache(repo, fname) if repo else None
        if isinstance(hit, str) and Path(hit).is_file():
            return Path(hit)
    return None


def missing_weights_message(name: str) -> str:
    """The note when ``--pretrained auto`` finds no weights: where it looked, and which file to give."""
    repo = _hub_repo(name) or f"timm/{name}"
    try:
        from huggingface_hub import constants

        where = str(Path(constants.HF_HUB_CACHE) / ("models--" + repo.replace("/", "--")))
    except ImportError:
        where = f"the Hugging Face hub cache (models--{repo.replace('/', '--')})"
    return (f"backbone {name}: no ImageNet weights in the local timm cache ({where}: timm keeps the weights it "
            f"downloads in the Hugging Face hub cache); starting from random weights. To use them, give the file "
            f"with --pretrained PATH: model.safetensors (or pytorch_model.bin) of the Hugging Face model {repo}")


def _create(name: str, pretrained: str) -> nn.Module:
    import timm

    kw = dict(features_only=True, out_indices=(0, 1, 2, 3))
    if pretrained in ("", "none"):
        return timm.create_model(name, pretrained=False, **kw)
    if pretrained == "auto":
        cached = _cached_weights(name)
        if cached is None:
            log.warning("%s", missing_weights_message(name))
            return timm.create_model(name, pretrained=False, **kw)
        log.info("backbone %s: ImageNet weights from %s", name, cached)
        pretrained = str(cached)
    path = Path(pretrained)
    if not path.is_file():
        raise ConfigError(f"{path}: backbone weights file not found")
    try:
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kw)
    except Exception as e:  # a file for another architecture
        raise ConfigError(f"{path}: cannot load as {name} weights ({e.__class__.__name__}: {str(e)[:200]})") from None


class PVTBackbone(nn.Module):
    """Images ``(B, 3, H, W)`` in [-1, 1] (H, W multiples of 32) -> four feature maps at
    strides 4, 8, 16, 32 with :attr:`channels` channels.  ImageNet normalisation is applied
    inside, so callers never normalise."""

    def __init__(self, name: str = "pvt_v2_b1", pretrained: str = "auto") -> None:
        super().__init__()
        if name not in BACKBONES:
            raise ConfigError(f"backbone must be one of {BACKBONES}, not {name!r}")
        self.body = _create(name, pretrained)
        self.channels: list[int] = list(self.body.feature_info.channels())
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = ((x + 1) * 0.5 - self.mean) / self.std
        return list(self.body(x))
