"""posesynth: render new, correctly labelled training images from perturbed poses.

``import posesynth`` is light: the Python API loads on first use (``posesynth.Augmenter``,
``posesynth.PerturbPose``; see :mod:`posesynth.augment.api`).
"""
import os as _os

# albumentations asks PyPI for a newer version whenever it is imported (a 2 s timeout, and a
# warning where there is no network): nothing here reaches the network at run time.  A user who
# wants the check sets NO_ALBUMENTATIONS_UPDATE=0 before importing posesynth.
_os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"
__all__ = ["Augmenter", "PerturbPose", "__version__"]

_API = ("Augmenter", "PerturbPose")


def __getattr__(name: str):
    if name in _API:
        from .augment import api

        return getattr(api, name)
    raise AttributeError(f"module 'posesynth' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([n for n in globals() if not n.startswith("_") or n == "__version__"] + list(_API))
