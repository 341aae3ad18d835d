"""Keypoints from predicted maps.

- :func:`find_peaks`: local maxima of each heatmap above a threshold, refined to sub-pixel
  precision by a parabola through the log of the 3 neighbours along each axis (exact for a
  Gaussian peak).
- :func:`decode_single`: the fast single-person path (refined argmax per keypoint).
- :func:`decode_people`: several people, grouped with the PAFs as OpenPose does: every
  candidate limb is scored by the PAF integral along it, candidates are matched per limb
  with scipy's linear assignment, and matched limbs are joined into people.

All coordinates returned are input pixels (the inverse of the pose-map grid mapping).
"""
from __future__ import annotations

import numpy as np
from scipy.ndimage import maximum_filter
from scipy.optimize import linear_sum_assignment

from ..datasets.layouts import KeypointLayout
from ..datasets.posemaps import from_grid

__all__ = ["find_peaks", "decode_single", "decode_people", "refine"]


def refine(hm: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sub-pixel offsets of peaks at integer ``(ys, xs)`` of a 2-D map (log-parabola fit)."""
    h, w = hm.shape
    lg = np.log(np.maximum(hm, 1e-10))

    def offset(c, m, p):
        den = 2 * c - m - p
        return np.where(den > 1e-9, 0.5 * (p - m) / np.maximum(den, 1e-9), 0.0).clip(-0.5, 0.5)

    xl, xr = np.clip(xs - 1, 0, w - 1), np.clip(xs + 1, 0, w - 1)
    yu, yd = np.clip(ys - 1, 0, h - 1), np.clip(ys + 1, 0, h - 1)
    dx = np.where((xs > 0) & (xs < w - 1), offset(lg[ys, xs], lg[ys, xl], lg[ys, xr]), 0.0)
    dy = np.where((ys > 0) & (ys < h - 1), offset(lg[ys, xs], lg[yu, xs], lg[yd, xs]), 0.0)
    return xs + dx, ys + dy


def find_peaks(heatmaps: np.ndarray, threshold: float = 0.1) -> list[np.ndarray]:
    """Per keypoint channel, an ``(N, 3)`` array of ``[x, y, score]`` in grid pixels."""
    hm = np.asarray(heatmaps, np.float32)
    is_max = (maximum_filter(hm, size=(1, 3, 3), mode="constant") == hm) & (hm > threshold)
    # a peak exactly between cells is a plateau of equal maxima: keep the first in raster order
    pad_m = np.pad(is_max, ((0, 0), (1, 1), (1, 1)))
    pad_h = np.pad(hm, ((0, 0), (1, 1), (1, 1)), constant_values=-1)
    h, w = hm.shape[1:]
    for dy, dx in ((0, -1), (-1, -1), (-1, 0), (-1, 1)):
        nb_m = pad_m[:, 1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
        nb_h = pad_h[:, 1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
        is_max &= ~(nb_m & (nb_h == hm))
    out = []
    for k in range(hm.shape[0]):
        ys, xs = np.nonzero(is_max[k])
        x, y = refine(hm[k], ys, xs)
        out.append(np.stack([x, y, hm[k, ys, xs]], 1).astype(np.float32))
    return out


def decode_single(heatmaps: np.ndarray, in_size: tuple[int, int], threshold: float = 0.1) -> np.ndarray:
    """One person: ``(1, K, 3)`` ``[x, y, v]`` in input pixels, ``v = 2`` where the peak is above
    ``threshold`` (else 0), plus ``(K,)`` peak scores."""
    hm = np.asarray(heatmaps, np.float32)
    k, h, w = hm.shape
    flat = hm.reshape(k, -1).argmax(1)
    ys, xs = np.divmod(flat, w)
    out = np.zeros((1, k, 3), np.float32)
    scores = hm[np.arange(k), ys, xs]
    for j in range(k):
        x, y = refine(hm[j], ys[j:j + 1], xs[j:j + 1])
        out[0, j, :2] = from_grid(np.array([x[0], y[0]]), in_size, (h, w))
    out[0, :, 2] = np.where(scores > threshold, 2.0, 0.0)
    return out, scores


def _bilinear(field: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    h, w = field.shape
    x = np.clip(x, 0, w - 1)
    y = np.clip(y, 0, h - 1)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    fx, fy = x - x0, y - y0
    return (field[y0, x0] * (1 - fx) * (1 - fy) + field[y0, x1] * fx * (1 - fy)
            + field[y1, x0] * (1 - fx) * fy + field[y1, x1] * fx * fy)


def _limb_scores(a: np.ndarray, b: np.ndarray, fx: np.ndarray, fy: np.ndarray, samples: int, paf_thr: float,
                 min_frac: float, max_len: float) -> np.ndarray:
    """``(Na, Nb)`` PAF integral scores of candidate limbs (``-inf`` where not a limb)."""
    d = b[None, :, :2] - a[:, None, :2]                       # (Na, Nb, 2)
    norm = np.linalg.norm(d, axis=-1)
    u = d / np.maximum(norm, 1e-6)[..., None]
    t = np.linspace(0, 1, samples)
    pts = a[:, None, None, :2] + t[None, None, :, None] * d[:, :, None, :]   # (Na, Nb, S, 2)
    vx = _bilinear(fx, pts[..., 0], pts[..., 1])
    vy = _bilinear(fy, pts[..., 0], pts[..., 1])
    dots = vx * u[..., 0:1] + vy * u[..., 1:2]               # (Na, Nb, S)
    score = dots.mean(-1) + np.minimum(0.5 * max_len / np.maximum(norm, 1e-6) - 1, 0)
    ok = ((dots > paf_thr).mean(-1) >= min_frac) & (score > 0) & (norm > 1e-6)
    return np.where(ok, score, -np.inf)


def _attach_fragments(people: list[np.ndarray], peaks: list[np.ndarray], k: int, min_parts: int) -> list[np.ndarray]:
    """Groups with fewer than ``min_parts`` parts, and peaks no limb joined to anyone (a wrist
    whose elbow is out of the image, a hip without a neck), go to the nearest person that lacks
    those keypoints, or stay people of their own; nothing a heatmap shows is thrown away."""
    whole = [p for p in people if (p >= 0).sum() >= min_parts]
    frags = [p for p in people if (p >= 0).sum() < min_parts]
    used = {(j, int(p[j])) for p in people for j in np.nonzero(p >= 0)[0]}
    for j in range(k):
        for c in range(len(peaks[j])):
            if (j, c) not in used:
                f = np.full(k, -1, np.int64)
                f[j] = c
                frags.append(f)

    def pts(p: np.ndarray) -> np.ndarray:
        return np.array([peaks[j][p[j], :2] for j in np.nonzero(p >= 0)[0]])

    def score(p: np.ndarray) -> float:
        return float(np.mean([peaks[j][p[j], 2] for j in np.nonzero(p >= 0)[0]]))

    for f in sorted(frags, key=lambda p: -score(p)):
        fp = pts(f)
        best, best_d = None, np.inf
        for p in whole:
            if ((p >= 0) & (f >= 0)).any():
                continue
            pp = pts(p)
            d = float(np.min(np.linalg.norm(fp[:, None] - pp[None], axis=-1)))
            extent = float(np.linalg.norm(pp.max(0) - pp.min(0))) if len(pp) > 1 else 0.0
            if d <= 1.5 * extent + 1.0 and d < best_d:
                best, best_d = p, d
        if best is not None:
            best[f >= 0] = f[f >= 0]
        else:
            whole.append(f.copy())
    return whole


def decode_people(heatmaps: np.ndarray, pafs: np.ndarray, layout: KeypointLayout, in_size: tuple[int, int],
                  threshold: float = 0.1, paf_samples: int = 10, paf_thr: float = 0.05, min_frac: float = 0.8,
                  min_parts: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Several people from heatmaps ``(K, h, w)`` and PAFs ``(2L, h, w)``.

    Returns ``(P, K, 3)`` keypoints ``[x, y, v]`` in input pixels (``v = 2`` found, 0 not) and
    ``(P,)`` person scores (mean of found keypoints' peaks), highest first.
    """
    k, h, w = heatmaps.shape
    peaks = find_peaks(heatmaps, threshold)
    # person: (K,) candidate indices (-1: none), plus the running sum of scores
    people: list[np.ndarray] = []
    for li, (ka, kb) in enumerate(layout.limbs):
        ca, cb = peaks[ka], peaks[kb]
        if len(ca) == 0 or len(cb) == 0:
            continue
        s = _limb_scores(ca, cb, pafs[2 * li], pafs[2 * li + 1], paf_samples, paf_thr, min_frac, float(h))
        if not np.isfinite(s).any():
            continue
        cost = np.where(np.isfinite(s), -s, 1e6)
        rows, cols = linear_sum_assignment(cost)
        for ia, ib in zip(rows, cols):
            if not np.isfinite(s[ia, ib]):
                continue
            has_a = [p for p in people if p[ka] == ia]
            has_b = [p for p in people if p[kb] == ib]
            if has_a and has_b:
                pa, pb = has_a[0], has_b[0]
                if pa is not pb and not ((pa >= 0) & (pb >= 0)).any():  # disjoint: merge
                    pa[pb >= 0] = pb[pb >= 0]
                    people = [p for p in people if p is not pb]
            elif has_a:
                if has_a[0][kb] < 0:
                    has_a[0][kb] = ib
            elif has_b:
                if has_b[0][ka] < 0:
                    has_b[0][ka] = ia
            else:
                p = np.full(k, -1, np.int64)
                p[ka], p[kb] = ia, ib
                people.append(p)
    people = _attach_fragments(people, peaks, k, min_parts)
    out, scores = [], []
    for p in people:
        kp = np.zeros((k, 3), np.float32)
        sc = []
        for j in np.nonzero(p >= 0)[0]:
            x, y, s = peaks[j][p[j]]
            kp[j, :2] = from_grid(np.array([x, y]), in_size, (h, w))
            kp[j, 2] = 2
            sc.append(s)
        out.append(kp)
        # a fragment (fewer than min_parts parts) scores lower than a whole person
        scores.append(float(np.mean(sc)) * min(1.0, len(sc) / max(min_parts, 1)))
    if not out:
        return np.zeros((0, k, 3), np.float32), np.zeros(0, np.float32)
    order = np.argsort(scores)[::-1]
    return np.stack(out)[order], np.asarray(scores, np.float32)[order]
