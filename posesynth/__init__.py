"""posesynth: render new, correctly labelled training images from perturbed poses.

``import posesynth`` is light: the Python API loads on first use (``posesynth.Augmenter``,
``posesynth.PerturbPose``; see :mod:`posesynth.augment.api`).
"""
__version__ = "0.1.0"
__all__ = ["Augmenter", "PerturbPose", "__version__"]

_API = ("Augmenter", "PerturbPose")


def __getattr__(name: str):
    if name in _API:
        from .augment import api

        return getattr(api, name)
    raise AttributeError(f"module 'posesynth' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_API))
