"""Conversion of keypoints between layouts, by keypoint name.

A conversion is a weight matrix ``W`` of shape ``(K_dst, K_src)``: each destination
keypoint is a weighted mean of source keypoints (one source for a plain renaming, two
with weight 1/2 for a midpoint such as the neck).  A destination keypoint is labelled only
if every source it uses is labelled, and takes the lowest visibility among them.

Keypoints are matched by their normalised names (:func:`~posesynth.datasets.layouts.canonical_name`:
case, spaces, hyphens, underscores, camelCase and ``l_``/``_left`` spellings do not matter),
so any layout converts to any other that shares enough joints, whatever the layouts are
called.  A destination ``neck`` that the source lacks is the midpoint of the shoulders, and a
``pelvis`` or ``mid_hip`` the midpoint of the hips.  A conversion is defined when at least
half of the destination keypoints can be found; the others stay unlabelled (for example
``mpii16 -> coco17`` has no face).  ``coco17``/``mpii16``/``blazepose33`` -> ``driver9`` and
``mpii16``/``blazepose33`` -> ``coco17`` are such conversions.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from ..errors import LayoutError
from .layouts import BLAZEPOSE33_NAMES, MPII16_NAMES, KeypointLayout, canonical_name, get_layout

__all__ = ["convert_keypoints", "conversion_matrix", "match_keypoints", "MPII16_NAMES", "BLAZEPOSE33_NAMES",
           "DERIVED_KEYPOINTS"]

# destination keypoint -> source keypoints averaged, used when the source lacks it (canonical names)
DERIVED_KEYPOINTS: dict[str, tuple[str, ...]] = {
    "neck": ("left_shoulder", "right_shoulder"),
    "pelvis": ("left_hip", "right_hip"),
    "mid_hip": ("left_hip", "right_hip"),
}


def _layout(layout: "str | KeypointLayout") -> KeypointLayout:
    return layout if isinstance(layout, KeypointLayout) else get_layout(layout)


@lru_cache(maxsize=64)
def _match(src: tuple[str, ...], dst: tuple[str, ...]) -> tuple[np.ndarray, tuple[str, ...]]:
    s = [canonical_name(n) for n in src]
    d = [canonical_name(n) for n in dst]
    if s == d:
        return np.eye(len(src)), ()
    index: dict[str, int] = {}
    for i, c in enumerate(s):
        index.setdefault(c, i)
    w = np.zeros((len(dst), len(src)), dtype=np.float64)
    missing = []
    for j, c in enumerate(d):
        if c in index:
            w[j, index[c]] = 1.0
        elif c in DERIVED_KEYPOINTS and all(x in index for x in DERIVED_KEYPOINTS[c]):
            for x in DERIVED_KEYPOINTS[c]:
                w[j, index[x]] = 1.0 / len(DERIVED_KEYPOINTS[c])
        else:
            missing.append(dst[j])
    w.setflags(write=False)
    return w, tuple(missing)


def match_keypoints(src: "str | KeypointLayout", dst: "str | KeypointLayout") -> tuple[np.ndarray, list[str]]:
    """``(W, missing)``: the ``(K_dst, K_src)`` weights by name, and the destination keypoint
    names no source keypoint gives (their rows are zero).  Never raises for a poor match."""
    s, d = _layout(src), _layout(dst)
    w, missing = _match(tuple(s.keypoints), tuple(d.keypoints))
    return w.copy(), list(missing)


def conversion_matrix(src: "str | KeypointLayout", dst: "str | KeypointLayout") -> np.ndarray:
    """(K_dst, K_src) weights; a row of zeros marks a keypoint the source lacks.

    Raises :class:`~posesynth.errors.LayoutError` when fewer than half of the destination
    keypoints can be matched by name.
    """
    s, d = _layout(src), _layout(dst)
    w, missing = match_keypoints(s, d)
    found = d.num_keypoints - len(missing)
    if 2 * found < d.num_keypoints:
        raise LayoutError(
            f"no conversion from layout '{s.name}' to '{d.name}': only {found} of the {d.num_keypoints} keypoints "
            f"of '{d.name}' match a keypoint of '{s.name}' by name (keypoints are matched by name, ignoring case, "
            f"spaces and underscores; give the data's own layout with --layout FILE.yaml to take them in order)")
    return w


def convert_keypoints(keypoints: np.ndarray, src: "str | KeypointLayout",
                      dst: "str | KeypointLayout") -> np.ndarray:
    """Convert ``(..., K_src, 3)`` keypoints ``[x, y, v]`` to ``(..., K_dst, 3)``.

    Coordinates are weighted means of the sources; ``v`` is the minimum over the sources
    (0 where any source is unlabelled or the destination has no source).  Unlabelled
    destination keypoints get coordinates 0.
    """
    kp = np.asarray(keypoints, dtype=np.float32)
    s, d = _layout(src), _layout(dst)
    w = conversion_matrix(s, d)
    if kp.shape[-2] != w.shape[1]:
        raise LayoutError(f"converting {s.name}->{d.name}: expected {w.shape[1]} keypoints, got {kp.shape[-2]}")
    used = w > 0                                            # (Kd, Ks)
    v = kp[..., 2]                                          # (..., Ks)
    big = np.where(used, v[..., None, :], np.inf)           # (..., Kd, Ks)
    vis = np.min(big, axis=-1)
    vis = np.where(np.isinf(vis), 0.0, vis)
    xy = np.einsum("ds,...sc->...dc", w, kp[..., :2])
    xy = np.where(vis[..., None] > 0, xy, 0.0)
    return np.concatenate([xy, vis[..., None]], axis=-1).astype(np.float32)
