"""The motion model's joints, per-person normalisation and training windows.

Joints: the model works on the keypoints of the layout it was trained on (its *model
layout*, recorded in the run).  Keypoints in another layout are mapped by name
(:class:`JointMap`); a ``neck`` the other layout lacks is the shoulders' midpoint.

Normalisation (per person, per sequence): coordinates are centred on the *root* (the hips'
midpoint; the mean of all joints when the layout has no hips) and divided by the *torso*
(the distance from the neck, or the shoulders' midpoint, to the root; the RMS distance of
the joints from the root without hips) of a reference frame: the last past frame for a
training window, the pose itself for a single pose.  Model coordinates are therefore
unitless, with the reference pose's root at 0 and its torso of length 1; x right, y down as
in the image.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ...datasets.layouts import KeypointLayout
from ...datasets.sequences import PoseSequence
from ...errors import LayoutError

__all__ = ["JointMap", "Normaliser", "Windows", "make_windows", "bones_of", "arm_joints"]


class JointMap:
    """Maps ``(..., K, 3)`` keypoints of ``layout`` to the ``J`` joints of ``model`` by name.

    A model joint named ``neck`` that ``layout`` lacks is the midpoint of its shoulders.  A
    mapped joint is labelled only when all its sources are (``v``: their minimum).
    Raises :class:`LayoutError` naming the joints that cannot be found.
    """

    def __init__(self, model: KeypointLayout, layout: KeypointLayout) -> None:
        self.model, self.layout = model, layout
        w = np.zeros((model.num_keypoints, layout.num_keypoints))
        missing = []
        for j, name in enumerate(model.keypoints):
            if name in layout.keypoints:
                w[j, layout.keypoints.index(name)] = 1.0
            elif name == "neck" and {"left_shoulder", "right_shoulder"} <= set(layout.keypoints):
                w[j, [layout.keypoints.index("left_shoulder"), layout.keypoints.index("right_shoulder")]] = 0.5
            else:
                missing.append(name)
        if missing:
            raise LayoutError(f"layout '{layout.name}' lacks the motion model's joint(s) {', '.join(missing)} "
                              f"(the model was trained on layout '{model.name}')")
        self.weights = w
        self.identity = layout.keypoints == model.keypoints
        # joints of ``layout`` that are a model joint, by name: (layout index, model index)
        self.direct = [(layout.keypoints.index(n), j) for j, n in enumerate(model.keypoints) if n in layout.keypoints]

    def __call__(self, kp: np.ndarray) -> np.ndarray:
        kp = np.asarray(kp, np.float32)
        if self.identity:
            return kp.copy()
        used = self.weights > 0
        vis = np.min(np.where(used, kp[..., None, :, 2], np.inf), axis=-1)
        xy = np.einsum("jk,...kc->...jc", self.weights, kp[..., :2])
        return np.concatenate([xy, vis[..., None]], -1).astype(np.float32)


def bones_of(layout: KeypointLayout) -> np.ndarray:
    """``(B, 2)`` joint pairs whose lengths the bone loss and metric use: the layout's limbs."""
    return np.asarray(layout.limbs, np.int64).reshape(-1, 2)


def arm_joints(layout: KeypointLayout) -> list[tuple[float, int, int, int]]:
    """``(side sign, shoulder, elbow, wrist)`` of each arm the layout names; sign -1 right, +1 left."""
    out = []
    for side, sign in (("right", -1.0), ("left", 1.0)):
        names = [f"{side}_{j}" for j in ("shoulder", "elbow", "wrist")]
        if all(n in layout.keypoints for n in names):
            out.append((sign, *(layout.keypoints.index(n) for n in names)))
    return out


@dataclass(frozen=True)
class Normaliser:
    """Root and torso of poses in the model layout (see the module docstring)."""

    root: tuple[int, ...]
    top: tuple[int, ...]

    @classmethod
    def for_layout(cls, layout: KeypointLayout) -> "Normaliser":
        names = layout.keypoints
        hips = tuple(names.index(n) for n in ("left_hip", "right_hip") if n in names)
        if len(hips) < 2:
            hips = ()
        if "neck" in names:
            top: tuple[int, ...] = (names.index("neck"),)
        else:
            top = tuple(names.index(n) for n in ("left_shoulder", "right_shoulder") if n in names)
            if len(top) < 2:
                top = ()
        return cls(hips, top if hips else ())

    def frame(self, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(..., J, 2)`` -> root ``(..., 2)`` and torso scale ``(...)`` (pixels, > 0)."""
        xy = np.asarray(xy, np.float64)
        root = xy[..., list(self.root), :].mean(-2) if self.root else xy.mean(-2)
        if self.top:
            scale = np.linalg.norm(xy[..., list(self.top), :].mean(-2) - root, axis=-1)
        else:
            scale = np.sqrt(((xy - root[..., None, :]) ** 2).sum(-1).mean(-1))
        return root, np.maximum(scale, 1e-6)

    def normalise(self, xy: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``xy (..., T, J, 2)`` in the frame of ``ref (..., J, 2)``: ``(normalised, root, scale)``."""
        root, scale = self.frame(ref)
        out = (np.asarray(xy, np.float64) - root[..., None, None, :]) / scale[..., None, None, None]
        return out.astype(np.float32), root, scale

    @staticmethod
    def denormalise(xy: np.ndarray, root: np.ndarray, scale: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`normalise`: ``(..., T, J, 2)`` back to pixels."""
        return np.asarray(xy, np.float64) * np.asarray(scale)[..., None, None, None] + np.asarray(root)[..., None, None, :]


@dataclass
class Windows:
    """Training windows: ``xy (N, T, J, 2)`` pixel coordinates in the model layout, with the
    ``sizes (N, 2)`` (H, W) of their frames; every joint of every frame is labelled."""

    xy: np.ndarray
    sizes: np.ndarray

    def __len__(self) -> int:
        return int(self.xy.shape[0])


def make_windows(seqs: Sequence[PoseSequence], jmap: JointMap, length: int, stride: int = 1) -> Windows:
    """All windows of ``length`` consecutive frames in which every model joint is labelled,
    starting every ``stride`` frames along each run of fully labelled frames."""
    xs, sizes = [], []
    for s in seqs:
        kp = jmap(s.keypoints)                                       # (T, J, 3)
        ok = (kp[..., 2] > 0).all(-1)
        # runs of fully labelled frames
        edges = np.flatnonzero(np.diff(np.concatenate([[0], ok.astype(np.int8), [0]])))
        for a, b in zip(edges[::2], edges[1::2]):
            for t in range(a, b - length + 1, stride):
                xs.append(kp[t:t + length, :, :2])
                sizes.append(s.size)
    j = jmap.model.num_keypoints
    if not xs:
        return Windows(np.zeros((0, length, j, 2), np.float32), np.zeros((0, 2), np.int64))
    return Windows(np.stack(xs).astype(np.float32), np.asarray(sizes, np.int64))
