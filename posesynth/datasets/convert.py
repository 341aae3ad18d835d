"""Conversion of keypoints between layouts.

A conversion is a weight matrix ``W`` of shape ``(K_dst, K_src)``: each destination
keypoint is a weighted mean of source keypoints (one source for a plain renaming, two
with weight 1/2 for a midpoint such as the neck).  A destination keypoint is labelled only
if every source it uses is labelled, and takes the lowest visibility among them.
Conversions chain: ``W_ac = W_bc @ W_ab``.

Defined: ``coco17 -> driver9``, ``mpii16 -> coco17``, ``blazepose33 -> coco17`` and, by
chaining, ``mpii16 -> driver9`` and ``blazepose33 -> driver9``.
"""
from __future__ import annotations

import numpy as np

from ..errors import LayoutError
from .layouts import COCO17, DRIVER9, KeypointLayout

__all__ = ["convert_keypoints", "conversion_matrix", "MPII16_NAMES", "BLAZEPOSE33_NAMES"]

MPII16_NAMES = ["right_ankle", "right_knee", "right_hip", "left_hip", "left_knee", "left_ankle",
                "pelvis", "thorax", "upper_neck", "head_top", "right_wrist", "right_elbow",
                "right_shoulder", "left_shoulder", "left_elbow", "left_wrist"]
BLAZEPOSE33_NAMES = [
    "nose", "left_eye_inner", "left_eye", "left_eye_outer", "right_eye_inner", "right_eye",
    "right_eye_outer", "left_ear", "right_ear", "mouth_left", "mouth_right", "left_shoulder",
    "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_pinky",
    "right_pinky", "left_index", "right_index", "left_thumb", "right_thumb", "left_hip",
    "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle", "left_heel",
    "right_heel", "left_foot_index", "right_foot_index"]

# destination name -> source names averaged (same-name entries are added automatically)
_TABLES: dict[tuple[str, str], tuple[list[str], list[str], dict[str, list[str]]]] = {
    ("coco17", "driver9"): (list(COCO17.keypoints), list(DRIVER9.keypoints),
                            {"neck": ["left_shoulder", "right_shoulder"]}),
    ("mpii16", "coco17"): (MPII16_NAMES, list(COCO17.keypoints), {}),
    ("blazepose33", "coco17"): (BLAZEPOSE33_NAMES, list(COCO17.keypoints), {}),
}
_SIZES = {"coco17": 17, "driver9": 9, "mpii16": 16, "blazepose33": 33}
_CHAINS = {("mpii16", "driver9"): "coco17", ("blazepose33", "driver9"): "coco17"}


def _matrix(src_names: list[str], dst_names: list[str], extra: dict[str, list[str]]) -> np.ndarray:
    w = np.zeros((len(dst_names), len(src_names)), dtype=np.float64)
    for j, name in enumerate(dst_names):
        srcs = extra.get(name) or ([name] if name in src_names else [])
        for s in srcs:
            w[j, src_names.index(s)] = 1.0 / len(srcs)
    return w


def _name(layout: "str | KeypointLayout") -> str:
    return layout.name if isinstance(layout, KeypointLayout) else str(layout)


def conversion_matrix(src: "str | KeypointLayout", dst: "str | KeypointLayout") -> np.ndarray:
    """(K_dst, K_src) weights; a row of zeros marks a keypoint the source lacks."""
    s, d = _name(src), _name(dst)
    if s == d:
        size = src.num_keypoints if isinstance(src, KeypointLayout) else _SIZES.get(s)
        if size is None:
            raise LayoutError(f"unknown layout '{s}'")
        return np.eye(size)
    if (s, d) in _TABLES:
        return _matrix(*_TABLES[(s, d)])
    if (s, d) in _CHAINS:
        mid = _CHAINS[(s, d)]
        return conversion_matrix(mid, d) @ conversion_matrix(s, mid)
    known = sorted({f"{a}->{b}" for a, b in list(_TABLES) + list(_CHAINS)})
    raise LayoutError(f"no conversion from layout '{s}' to '{d}' (defined: {', '.join(known)})")


def convert_keypoints(keypoints: np.ndarray, src: "str | KeypointLayout",
                      dst: "str | KeypointLayout") -> np.ndarray:
    """Convert ``(..., K_src, 3)`` keypoints ``[x, y, v]`` to ``(..., K_dst, 3)``.

    Coordinates are weighted means of the sources; ``v`` is the minimum over the sources
    (0 where any source is unlabelled or the destination has no source).  Unlabelled
    destination keypoints get coordinates 0.
    """
    kp = np.asarray(keypoints, dtype=np.float32)
    w = conversion_matrix(src, dst)
    if kp.shape[-2] != w.shape[1]:
        raise LayoutError(f"converting {_name(src)}->{_name(dst)}: expected {w.shape[1]} keypoints, got {kp.shape[-2]}")
    used = w > 0                                            # (Kd, Ks)
    v = kp[..., 2]                                          # (..., Ks)
    big = np.where(used, v[..., None, :], np.inf)           # (..., Kd, Ks)
    vis = np.min(big, axis=-1)
    vis = np.where(np.isinf(vis), 0.0, vis)
    xy = np.einsum("ds,...sc->...dc", w, kp[..., :2])
    xy = np.where(vis[..., None] > 0, xy, 0.0)
    return np.concatenate([xy, vis[..., None]], axis=-1).astype(np.float32)
