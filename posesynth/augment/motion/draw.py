"""Skeleton strips: pose sequences drawn frame by frame, side by side."""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from ...datasets.layouts import KeypointLayout
from ...datasets.visualize import limb_colours

__all__ = ["draw_strips"]

_GREY = (150, 150, 150)


def _draw_pose(img: np.ndarray, xy: np.ndarray, layout: KeypointLayout, x0: int, cell: int, span: float,
               centre: tuple[float, float], colours: "list[tuple[int, int, int]] | None") -> None:
    p = ((xy - np.asarray(centre)) / span * 0.5 + 0.5) * cell         # centre +- span -> the cell
    p[:, 0] += x0
    pts = np.round(p * 16).astype(np.int32)
    for li, (a, b) in enumerate(layout.limbs):
        c = colours[li] if colours else _GREY
        cv2.line(img, tuple(int(v) for v in pts[a]), tuple(int(v) for v in pts[b]), c, 1, cv2.LINE_AA, 4)


def draw_strips(rows: Sequence[tuple[np.ndarray, Sequence[np.ndarray]]], layout: KeypointLayout, cell: int = 64,
                max_frames: int = 16, span: float = 1.7, centre: tuple[float, float] = (0.0, -0.7)) -> np.ndarray:
    """RGB uint8 picture of pose sequences in normalised coordinates (see :mod:`.data`).

    ``rows``: for each example, ``(past (Tp, J, 2), [future (Tf, J, 2), ...])``; each future
    becomes one strip: the past in grey, then the future in colour (at most ``max_frames``
    cells per strip, evenly spaced in time).  The first future of an example is usually the
    real one; a white bar separates examples.  A cell shows ``centre +- span`` (normalised
    coordinates: the root at 0, the neck near ``(0, -1)``).
    """
    strips = []
    cols = limb_colours(max(layout.num_limbs, 1))
    for past, futures in rows:
        for fut in futures:
            seq = np.concatenate([past, fut], 0)
            n = len(seq)
            idx = np.unique(np.linspace(0, n - 1, min(max_frames, n)).round().astype(int))
            img = np.full((cell, cell * len(idx), 3), 24, np.uint8)
            for k, t in enumerate(idx):
                _draw_pose(img, seq[t], layout, k * cell, cell, span, centre, None if t < len(past) else cols)
            strips.append(img)
        if strips:
            strips.append(np.full((2, strips[-1].shape[1], 3), 255, np.uint8))
    if not strips:
        return np.zeros((cell, cell, 3), np.uint8)
    width = max(s.shape[1] for s in strips)
    strips = [np.pad(s, ((0, 0), (0, width - s.shape[1]), (0, 0))) for s in strips]
    return np.concatenate(strips[:-1], 0)
