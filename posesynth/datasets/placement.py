"""Where a video's person stands in its frames: the pose statistics that global pose
normalisation (:mod:`posesynth.augment.transfer`) places a source's poses by, and that a GAN
run records for its training person.

For each video, :func:`pose_stats` finds, on the first person of every frame, the anchor (the
mean of the labelled ankles, or of the hips where the layout or the data has no ankles): its
smallest and largest image y over the video, ``far`` and ``close`` (the camera looks down, so
a larger y is closer), the tallest skeleton (y extent of the labelled keypoints) among the
frames whose anchor lies within ``band`` of ``far`` and of ``close``, and the median anchor x.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..errors import PosesynthError
from .layouts import KeypointLayout
from .sample import pad_people

__all__ = ["PoseStats", "pose_stats", "source_pose_stats", "anchor_points", "skeleton_heights", "ANCHORS"]

ANCHORS = {"ankle": ("left_ankle", "right_ankle"), "hip": ("left_hip", "right_hip")}


def _first_person(keypoints: np.ndarray) -> np.ndarray:
    kp = np.asarray(keypoints, np.float64)
    if kp.ndim != 4 or kp.shape[-1] != 3:
        raise ValueError(f"keypoints must be (N, P, K, 3), got {kp.shape}")
    if kp.shape[1] == 0:
        return np.zeros((kp.shape[0], kp.shape[2], 3))
    return kp[:, 0]


def anchor_points(keypoints: np.ndarray, layout: KeypointLayout, anchor: str) -> np.ndarray:
    """``(N, P, K, 3)`` -> ``(N, P, 2)``: each person's anchor (mean of its labelled ankles or
    hips) in pixels; NaN where the person has none of them labelled."""
    idx = [layout.index(n) for n in ANCHORS[anchor]]
    kp = np.asarray(keypoints, np.float64)[..., idx, :]                     # (N, P, 2, 3)
    w = (kp[..., 2] > 0).astype(np.float64)
    n = w.sum(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, (kp[..., :2] * w[..., None]).sum(-2) / n, np.nan)


def skeleton_heights(keypoints: np.ndarray) -> np.ndarray:
    """``(N, P, K, 3)`` -> ``(N, P)``: y extent of each person's labelled keypoints (NaN with
    fewer than two)."""
    kp = np.asarray(keypoints, np.float64)
    vis = kp[..., 2] > 0
    y = kp[..., 1]
    hi = np.where(vis, y, -np.inf).max(-1)
    lo = np.where(vis, y, np.inf).min(-1)
    return np.where(vis.sum(-1) >= 2, hi - lo, np.nan)


def _has(layout: KeypointLayout, anchor: str) -> bool:
    return all(n in layout.keypoints for n in ANCHORS[anchor])


@dataclass
class PoseStats:
    """A video's person placement in its frames (pixels); see the module docstring.

    Attributes:
        anchor: ``"ankle"`` or ``"hip"``.
        far, close: smallest and largest anchor y.
        height_far, height_close: tallest skeleton near ``far`` and near ``close``.
        center_x: median anchor x.
        frame_size: ``(H, W)`` of the frames.
        frames: frames with an anchor (out of ``total`` frames).
    """

    anchor: str
    far: float
    close: float
    height_far: float
    height_close: float
    center_x: float
    frame_size: tuple[int, int]
    frames: int = 0
    total: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["frame_size"] = list(self.frame_size)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PoseStats":
        d = dict(d)
        d["frame_size"] = tuple(d["frame_size"])
        return cls(**d)


def pose_stats(keypoints: np.ndarray, layout: KeypointLayout, frame_size: tuple[int, int], anchor: str = "auto",
               band: float = 0.1, source: str = "keypoints") -> PoseStats:
    """The :class:`PoseStats` of a sequence of ``(N, P, K, 3)`` keypoints (first person of each frame).

    Args:
        anchor: ``ankle``, ``hip`` or ``auto`` (ankles where the layout has them and at least
            half the frames label one, else hips).
        band: frames whose anchor is within ``band * (close - far)`` (at least 1% of the frame
            height) of ``far`` (``close``) give ``height_far`` (``height_close``).
        source: named in errors.
    """
    kp = _first_person(keypoints)[:, None]                                  # (N, 1, K, 3)
    if anchor == "auto":
        anchor = "hip"
        if _has(layout, "ankle"):
            a = anchor_points(kp, layout, "ankle")[:, 0, 1]
            if np.isfinite(a).mean() >= 0.5:
                anchor = "ankle"
    if anchor not in ANCHORS:
        raise PosesynthError(f"anchor must be ankle, hip or auto, not {anchor!r}")
    if not _has(layout, anchor):
        raise PosesynthError(f"{source}: layout '{layout.name}' has no {' / '.join(ANCHORS[anchor])} keypoints "
                             "to place the person by")
    pts = anchor_points(kp, layout, anchor)[:, 0]                           # (N, 2)
    hts = skeleton_heights(kp)[:, 0]
    ok = np.isfinite(pts[:, 1]) & np.isfinite(hts) & (hts > 0)
    if not ok.any():
        raise PosesynthError(f"{source}: no frame has a labelled {anchor} and a skeleton to measure")
    y, h = pts[ok, 1], hts[ok]
    far, close = float(y.min()), float(y.max())
    tol = max(band * (close - far), 0.01 * frame_size[0])
    return PoseStats(anchor, far, close, float(h[y <= far + tol].max()), float(h[y >= close - tol].max()),
                     float(np.median(pts[ok, 0])), tuple(int(v) for v in frame_size), int(ok.sum()), len(kp))


def source_pose_stats(source: Any, anchor: str = "auto", name: str = "target",
                      max_samples: "int | None" = None) -> PoseStats:
    """:func:`pose_stats` of the samples of a :class:`~posesynth.datasets.formats.KeypointSource`
    (a person's training frames, in their own pixels; all frames must share one size): every
    sample, or ``max_samples`` of them evenly spaced.  A GAN run records it for ``transfer``."""
    n = len(source)
    idx = range(n) if not max_samples or n <= max_samples else np.unique(
        np.linspace(0, n - 1, max_samples).round().astype(int))
    samples = [source[int(i)] for i in idx]
    sizes = {s.image.shape[:2] for s in samples}
    if len(sizes) != 1:
        raise PosesynthError(f"{name}: frames of {len(sizes)} different sizes ({', '.join(f'{h}x{w}' for h, w in sorted(sizes)[:4])}); "
                             "pose statistics need one frame size")
    kp = pad_people([s.keypoints for s in samples], num_keypoints=source.layout.num_keypoints)
    return pose_stats(kp, source.layout, sizes.pop(), anchor=anchor, source=name)
