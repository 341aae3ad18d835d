"""Pose-map rendering speed: vectorised posesynth vs a per-pixel Python reference.

Prints samples/s for one driver9 person rendered at 384x384 (GAN conditioning) and at
96x96 (pose-network targets), as the original code did for each training sample.

    python benchmarks/bench_posemaps.py [--reps 50]
"""
from __future__ import annotations

import argparse
import math
import time

import numpy as np

from posesynth.datasets.layouts import DRIVER9
from posesynth.datasets.posemaps import render_pose_maps
from posesynth.datasets.synthetic import render_scene, scene_rng


def per_pixel_reference(kp, layout, in_size, out_size, sigma=7.0, width=8.0):
    """The original's approach: Python loops over every output pixel (kept here only to compare)."""
    h, w = out_size
    s = w / in_size[1]
    out = np.zeros((layout.num_keypoints + 2 * layout.num_limbs, h, w), np.float32)
    for j in range(layout.num_keypoints):
        if kp[0, j, 2] <= 0:
            continue
        cx, cy = (kp[0, j, 0] + 0.5) * s - 0.5, (kp[0, j, 1] + 0.5) * s - 0.5
        for y in range(h):
            for x in range(w):
                out[j, y, x] = math.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * (sigma * s) ** 2))
    for li, (a, b) in enumerate(layout.limbs):
        if kp[0, a, 2] <= 0 or kp[0, b, 2] <= 0:
            continue
        ax, ay = kp[0, a, :2] * s
        bx, by = kp[0, b, :2] * s
        n = math.hypot(bx - ax, by - ay) or 1.0
        ux, uy = (bx - ax) / n, (by - ay) / n
        for y in range(h):
            for x in range(w):
                along = (x - ax) * ux + (y - ay) * uy
                across = abs((x - ax) * uy - (y - ay) * ux)
                if 0 <= along <= n and across <= width * s:
                    out[layout.num_keypoints + 2 * li, y, x] = ux
                    out[layout.num_keypoints + 2 * li + 1, y, x] = uy
    return out


def timeit(fn, reps):
    fn()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--reps", type=int, default=50)
    args = ap.parse_args()
    s = render_scene(scene_rng(0, 0), 384, passenger_prob=0.0)
    kp, masks = s.keypoints[:1], s.masks
    rows = []
    for name, size in (("384x384", (384, 384)), ("96x96", (96, 96))):
        fast = timeit(lambda: render_pose_maps(kp, DRIVER9, (384, 384), size, masks), args.reps)
        slow = timeit(lambda: per_pixel_reference(kp, DRIVER9, (384, 384), size), 1)
        rows.append((name, fast, slow))
    both_fast = sum(r[1] for r in rows)
    both_slow = sum(r[2] for r in rows)
    print(f"{'grid':<14}{'posesynth ms':>14}{'samples/s':>12}{'per-pixel ms':>15}{'samples/s':>12}{'speed-up':>10}")
    for name, f, sl in rows + [("384 + 96", both_fast, both_slow)]:
        print(f"{name:<14}{f * 1e3:>14.2f}{1 / f:>12.0f}{sl * 1e3:>15.1f}{1 / sl:>12.2f}{sl / f:>9.0f}x")
    print("one driver9 person, 26 channels (9 heatmaps, 16 PAF, 1 mask); sigma 7 px, PAF half-width 8 px")


if __name__ == "__main__":
    main()
