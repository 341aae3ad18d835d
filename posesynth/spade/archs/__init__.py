"""The generator architectures of ``train-gan``, one module each (see :mod:`.base`)."""
from __future__ import annotations

from ...errors import ConfigError
from .base import GeneratorArch, RenderFn
from .nearest import NearestArch
from .pix2pix import Pix2PixArch
from .refine import RefineArch
from .spade import SpadeArch
from .vanilla import VanillaArch

__all__ = ["GeneratorArch", "RenderFn", "ARCH_CLASSES", "arch_class", "MODES"]

#: Every architecture class; ``arch_class`` picks one by ``--arch`` and ``--mode``.
ARCH_CLASSES: tuple[type[GeneratorArch], ...] = (SpadeArch, RefineArch, Pix2PixArch, VanillaArch, NearestArch)
MODES = tuple(dict.fromkeys(m for cls in ARCH_CLASSES for m in cls.modes))


def arch_class(arch: str, mode: str = "full") -> type[GeneratorArch]:
    """The architecture ``arch`` in ``mode`` (a clear error for an unknown pair)."""
    names = [c for c in ARCH_CLASSES if c.name == arch]
    if not names:
        raise ConfigError(f"arch must be one of {', '.join(dict.fromkeys(c.name for c in ARCH_CLASSES))}, "
                          f"not {arch!r}")
    for cls in names:
        if mode in cls.modes:
            return cls
    modes = sorted({m for c in names for m in c.modes})
    raise ConfigError(f"--mode {mode} is not for --arch {arch} (its modes: {', '.join(modes)})")
