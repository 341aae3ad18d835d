"""Metrics of generated poses: bone-length error, joint angles, angle histograms, coverage, AUC.

All functions take NumPy arrays of 2D poses ``(..., J, 2)`` (any unit: pixels or normalised).
"""
from __future__ import annotations

import numpy as np

from ...datasets.layouts import KeypointLayout
from .data import arm_joints

__all__ = ["bone_length_error", "joint_angles", "angle_histogram_distance", "angle_coverage", "auc"]


def bone_length_error(poses: np.ndarray, own: np.ndarray, bones: np.ndarray) -> float:
    """Mean absolute deviation of each bone's length from the person's own, in % of the bone.

    ``poses (N, T, J, 2)`` (or ``(N, J, 2)``), ``own (N, J, 2)`` the person's reference pose,
    ``bones (B, 2)`` joint pairs; the mean is over people, frames and bones.
    """
    poses = np.asarray(poses, np.float64)
    if poses.ndim == 3:
        poses = poses[:, None]
    own = np.asarray(own, np.float64)
    ln = np.linalg.norm(poses[..., bones[:, 1], :] - poses[..., bones[:, 0], :], axis=-1)    # (N, T, B)
    ref = np.linalg.norm(own[:, bones[:, 1]] - own[:, bones[:, 0]], axis=-1)[:, None]        # (N, 1, B)
    return float(100.0 * np.mean(np.abs(ln - ref) / np.maximum(ref, 1e-9)))


def _signed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.degrees(np.arctan2(a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0], (a * b).sum(-1)))


def joint_angles(poses: np.ndarray, layout: KeypointLayout) -> np.ndarray:
    """``(..., J, 2)`` -> ``(..., A, 2)`` degrees in (-180, 180]: for each arm ``A`` the layout
    names (right, then left), the upper arm's angle from hanging along the torso (outward
    positive) and the elbow flexion (towards the body positive), as the synthetic scenes
    define them.  The torso's downward direction is from the neck (or the shoulders'
    midpoint) to the hips' midpoint; without hips, perpendicular to the shoulder line."""
    xy = np.asarray(poses, np.float64)
    names = layout.keypoints
    sh = xy[..., [names.index("left_shoulder"), names.index("right_shoulder")], :].mean(-2)
    top = xy[..., names.index("neck"), :] if "neck" in names else sh
    if "left_hip" in names and "right_hip" in names:
        down = xy[..., [names.index("left_hip"), names.index("right_hip")], :].mean(-2) - top
    else:  # image y points down: rotate the right->left shoulder line by +90 degrees
        line = xy[..., names.index("left_shoulder"), :] - xy[..., names.index("right_shoulder"), :]
        down = np.stack([-line[..., 1], line[..., 0]], -1)
    out = []
    for sign, s, e, w in arm_joints(layout):
        up = xy[..., e, :] - xy[..., s, :]
        fore = xy[..., w, :] - xy[..., e, :]
        out.append(np.stack([-sign * _signed(down, up), sign * _signed(up, fore)], -1))
    return np.stack(out, -2)


def _hist(a: np.ndarray, bins: int) -> np.ndarray:
    h, _ = np.histogram(np.asarray(a).ravel(), bins=bins, range=(-180.0, 180.0))
    return h / max(h.sum(), 1)


def angle_histogram_distance(a: np.ndarray, b: np.ndarray, bin_deg: float = 10.0) -> float:
    """Distance between the joint-angle histograms of two pose sets: for each angle (each
    arm's shoulder and elbow, ``(..., A, 2)`` from :func:`joint_angles`), the total-variation
    distance (0 = equal, 1 = disjoint) of ``bin_deg``-degree histograms, averaged over angles."""
    a = np.asarray(a).reshape(-1, *np.asarray(a).shape[-2:])
    b = np.asarray(b).reshape(-1, *np.asarray(b).shape[-2:])
    bins = int(round(360 / bin_deg))
    d = [0.5 * np.abs(_hist(a[:, i, k], bins) - _hist(b[:, i, k], bins)).sum()
         for i in range(a.shape[1]) for k in range(a.shape[2])]
    return float(np.mean(d))


def angle_coverage(angles: np.ndarray, bin_deg: float = 15.0) -> int:
    """Angle coverage: the number of ``bin_deg`` x ``bin_deg`` cells of the (shoulder angle,
    elbow flexion) plane hit by at least one arm in ``angles (..., A, 2)`` (both arms pooled)."""
    ang = np.asarray(angles).reshape(-1, 2)
    ang = ang[np.isfinite(ang).all(1)]
    n = int(round(360 / bin_deg))
    cells = np.clip(np.floor((ang + 180.0) / bin_deg).astype(np.int64), 0, n - 1)
    return int(len(np.unique(cells[:, 0] * n + cells[:, 1])))


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Area under the ROC curve: the probability that a score from ``pos`` exceeds one from
    ``neg`` (ties count one half); 1 = perfect separation, 0.5 = chance."""
    pos, neg = np.asarray(pos, np.float64).ravel(), np.asarray(neg, np.float64).ravel()
    allv = np.concatenate([pos, neg])
    order = np.argsort(allv, kind="mergesort")
    ranks = np.empty(len(allv))
    sorted_v = allv[order]
    # average ranks for ties
    uniq, start, counts = np.unique(sorted_v, return_index=True, return_counts=True)
    avg = start + (counts - 1) / 2.0 + 1
    ranks[order] = np.repeat(avg, counts)
    r_pos = ranks[:len(pos)].sum()
    return float((r_pos - len(pos) * (len(pos) + 1) / 2) / max(len(pos) * len(neg), 1))
