"""Square crops around the arms: the box a refiner works on, the crop itself (resized with
area averaging) and keypoints mapped into it (pixel centres at integers)."""
from __future__ import annotations

import cv2
import numpy as np

from .geometry import RegionSpec, limb_segments, moved_arms
from .layouts import KeypointLayout

__all__ = ["crop_box", "crop", "to_crop", "union_box"]


def crop_box(old_kp: np.ndarray, new_kp: "np.ndarray | None", layout: KeypointLayout, spec: RegionSpec,
             margin: float) -> "tuple[int, int, int] | None":
    """``(x0, y0, side)`` in pixels: the square around the capsules of the moved arms of one
    image (``(P, K, 3)`` old and new keypoints; with ``new_kp`` None, around every labelled
    arm of ``old_kp``), each capsule ``(radius + dilate + feather) x torso`` wide, grown by
    ``margin`` of the box's side on every side.  ``None`` when no arm qualifies."""
    pts, rad = [], []
    for p in range(old_kp.shape[0]):
        poses = [old_kp[p]] if new_kp is None else [old_kp[p], new_kp[p]]
        arms = None if new_kp is None else moved_arms(old_kp[p], new_kp[p], layout)
        if arms is not None and not arms:
            continue
        for kp in poses:
            segs, tor = limb_segments(kp, layout, arms, spec.hand)
            if len(segs):
                pts.append(segs.reshape(-1, 2))
                rad.append(np.repeat((spec.radius + spec.dilate + spec.feather) * tor, 2))
    if not pts:
        return None
    xy, r = np.concatenate(pts), np.concatenate(rad)
    lo, hi = (xy - r[:, None]).min(0), (xy + r[:, None]).max(0)
    side = float((hi - lo).max()) * (1 + 2 * margin)
    c = (lo + hi) / 2
    side_i = max(int(np.ceil(side)), 8)
    x0, y0 = (np.floor(c - side_i / 2)).astype(int)
    return int(x0), int(y0), side_i


def crop(img: np.ndarray, box: tuple[int, int, int], size: int, interp: int = cv2.INTER_AREA) -> np.ndarray:
    """The square ``box`` of ``img`` (``(H, W)`` or ``(H, W, C)``; pixels outside the image are
    the nearest edge's) resized to ``size x size``."""
    x0, y0, side = box
    h, w = img.shape[:2]
    pad = [max(0, -y0), max(0, y0 + side - h), max(0, -x0), max(0, x0 + side - w)]
    part = img[max(y0, 0):min(y0 + side, h), max(x0, 0):min(x0 + side, w)]
    if any(pad):
        part = cv2.copyMakeBorder(np.ascontiguousarray(part), *pad, cv2.BORDER_REPLICATE)
    if side == size:
        return np.ascontiguousarray(part)
    return cv2.resize(part, (size, size), interpolation=interp if side > size else cv2.INTER_LINEAR)


def to_crop(kp: np.ndarray, box: tuple[int, int, int], size: int) -> np.ndarray:
    """Keypoints ``[x, y, v]`` in image pixels -> pixels of the ``size`` crop of ``box``
    (pixel centres at integers: ``x' = (x - x0 + 0.5) size / side - 0.5``)."""
    x0, y0, side = box
    out = np.array(kp, np.float32, copy=True)
    k = size / side
    out[..., 0] = (out[..., 0] - x0 + 0.5) * k - 0.5
    out[..., 1] = (out[..., 1] - y0 + 0.5) * k - 0.5
    return out


def union_box(box: "tuple[int, int, int] | None", m: np.ndarray, margin: float) -> tuple[int, int, int]:
    """``box`` grown (as a square) to hold every pixel where ``m > 0``."""
    ys, xs = np.nonzero(m > 0)
    lo, hi = np.array([xs.min(), ys.min()], float), np.array([xs.max() + 1, ys.max() + 1], float)
    if box is not None:
        x0, y0, side = box
        lo, hi = np.minimum(lo, [x0, y0]), np.maximum(hi, [x0 + side, y0 + side])
        side_i = int(np.ceil((hi - lo).max()))
    else:
        side_i = int(np.ceil((hi - lo).max() * (1 + 2 * margin)))
    c = (lo + hi) / 2
    x0, y0 = np.floor(c - side_i / 2).astype(int)
    return int(x0), int(y0), max(side_i, 8)
