"""``--arch vanilla``: the skeleton vector (normalised 2-D coordinates and visibility flags)
to an image through transposed convolutions; D (the 70x70 PatchGAN on stick figure + image),
losses and optimiser as pix2pix.  Full mode only."""
from __future__ import annotations

from typing import Any

from .pix2pix import Pix2PixArch

__all__ = ["VanillaArch"]


class VanillaArch(Pix2PixArch):
    name = "vanilla"
    columns = "stick figure (the skeleton vector, drawn) | generated | real"

    def generator_kw(self) -> dict[str, Any]:
        return {"z_dim": self.cfg.z_dim}

    @classmethod
    def describe(cls, cfg: Any) -> str:
        return cls.name
