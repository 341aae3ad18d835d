"""Drawing datasets for people to look at: skeletons, PAF arrows, mask overlays, grids."""
from __future__ import annotations

import colorsys
from typing import Sequence

import cv2
import numpy as np

from .layouts import KeypointLayout
from .posemaps import PoseMapSpec, render_pafs
from .sample import Sample

__all__ = ["draw_sample", "make_grid", "limb_colours", "maps_to_rgb"]

_MASK_COLOURS = [(255, 200, 0), (0, 200, 255), (255, 0, 200), (120, 255, 120)]


def limb_colours(n: int) -> list[tuple[int, int, int]]:
    """``n`` distinct RGB colours around the hue circle."""
    return [tuple(int(255 * c) for c in colorsys.hsv_to_rgb(i / max(n, 1), 0.9, 1.0)) for i in range(n)]


def draw_sample(sample: Sample, layout: KeypointLayout, size: int = 256, pafs: bool = True,
                masks: bool = True, spec: PoseMapSpec = PoseMapSpec()) -> np.ndarray:
    """An RGB uint8 picture ``(size, size*W/H, 3)`` of a sample with its labels.

    Masks are tinted, PAFs drawn as arrows on a coarse grid, limbs as coloured lines and
    keypoints as dots (filled: visible, hollow: occluded; unlabelled ones are not drawn).
    """
    h, w = sample.image.shape[:2]
    scale = size / h
    out_w = max(int(round(w * scale)), 1)
    img = cv2.resize(sample.image, (out_w, size), interpolation=cv2.INTER_AREA).astype(np.float32)
    if masks and sample.masks.shape[0]:
        m = cv2.resize(np.ascontiguousarray(sample.masks.transpose(1, 2, 0)).astype(np.uint8), (out_w, size),
                       interpolation=cv2.INTER_NEAREST).reshape(size, out_w, -1)
        for i in range(m.shape[-1]):
            tint = np.array(_MASK_COLOURS[i % len(_MASK_COLOURS)], np.float32)
            img = np.where(m[..., i:i + 1] > 0, 0.5 * img + 0.5 * tint, img)
    img = np.clip(img, 0, 255).astype(np.uint8)
    kp = sample.keypoints.copy()
    kp[..., :2] = (kp[..., :2] + 0.5) * scale - 0.5
    cols = limb_colours(max(layout.num_limbs, 1))
    t = max(size // 128, 1)
    if pafs and layout.num_limbs and kp.shape[0]:
        step = max(size // 24, 4)
        grid = (size // step, out_w // step)
        field = render_pafs(sample.keypoints, layout.limbs, (h, w), grid, spec.paf_width)
        for li in range(layout.num_limbs):
            vx, vy = field[2 * li], field[2 * li + 1]
            for gy, gx in zip(*np.nonzero(np.hypot(vx, vy) > 0.5)):
                cx, cy = (gx + 0.5) * step, (gy + 0.5) * step
                d = np.array([vx[gy, gx], vy[gy, gx]]) * step * 0.45
                cv2.arrowedLine(img, (int(cx - d[0]), int(cy - d[1])), (int(cx + d[0]), int(cy + d[1])),
                                cols[li], 1, cv2.LINE_AA, tipLength=0.4)
    for person in kp:
        for li, (a, b) in enumerate(layout.limbs):
            if person[a, 2] > 0 and person[b, 2] > 0:
                cv2.line(img, tuple(int(v) for v in person[a, :2]), tuple(int(v) for v in person[b, :2]),
                         cols[li], 2 * t, cv2.LINE_AA)
        for x, y, v in person:
            if v > 0:
                cv2.circle(img, (int(x), int(y)), 2 * t + 1, (255, 255, 255), -1 if v > 1 else t, cv2.LINE_AA)
    return img


def make_grid(samples: Sequence[Sample], layout: KeypointLayout, cols: int = 4, cell: int = 256,
              **kw) -> np.ndarray:
    """Samples drawn by :func:`draw_sample`, letterboxed into ``cell x cell`` tiles, in a grid."""
    rows = max((len(samples) + cols - 1) // cols, 1)
    grid = np.full((rows * cell, cols * cell, 3), 32, np.uint8)
    for i, s in enumerate(samples):
        tile = draw_sample(s, layout, size=cell, **kw)
        if tile.shape[1] > cell:
            f = cell / tile.shape[1]
            tile = cv2.resize(tile, (cell, max(int(tile.shape[0] * f), 1)), interpolation=cv2.INTER_AREA)
        r, c = divmod(i, cols)
        y0 = r * cell + (cell - tile.shape[0]) // 2
        x0 = c * cell + (cell - tile.shape[1]) // 2
        grid[y0:y0 + tile.shape[0], x0:x0 + tile.shape[1]] = tile
    return grid


def maps_to_rgb(maps: np.ndarray, layout: KeypointLayout) -> np.ndarray:
    """A ``(C, H, W)`` pose-map stack as an ``(H, W, 3)`` uint8 picture: heatmaps in one
    colour per keypoint, PAF magnitudes in grey, masks tinted."""
    k, n_l = layout.num_keypoints, layout.num_limbs
    h, w = maps.shape[1:]
    img = np.zeros((h, w, 3), np.float32)
    paf = maps[k:k + 2 * n_l].reshape(n_l, 2, h, w) if n_l else np.zeros((0, 2, h, w), np.float32)
    img += 90 * np.clip(np.hypot(paf[:, 0], paf[:, 1]).max(0, initial=0), 0, 1)[..., None]
    for i, m in enumerate(maps[k + 2 * n_l:]):
        img += 0.5 * m[..., None] * np.array(_MASK_COLOURS[i % len(_MASK_COLOURS)], np.float32)
    cols = np.array(limb_colours(k), np.float32)
    hm = np.clip(maps[:k], 0, 1)
    img = np.maximum(img, (hm[..., None] * cols[:, None, None, :]).max(0))
    return np.clip(img, 0, 255).astype(np.uint8)
