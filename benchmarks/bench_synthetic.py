"""Synthetic driver-scene generation speed (``posesynth make-data``): images/s at 384 px.

    python benchmarks/bench_synthetic.py [--num 200]
"""
from __future__ import annotations

import argparse
import tempfile
import time

from posesynth.datasets.coco import encode_image
from posesynth.datasets.make_data import make_synthetic_dataset
from posesynth.datasets.synthetic import render_scene, scene_rng


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--num", type=int, default=200)
    ap.add_argument("--size", type=int, default=384)
    a = ap.parse_args()
    t = time.perf_counter()
    for i in range(a.num):
        render_scene(scene_rng(0, i), a.size)
    render = (time.perf_counter() - t) / a.num
    t = time.perf_counter()
    for i in range(a.num):
        encode_image(render_scene(scene_rng(0, i), a.size).image)
    enc = (time.perf_counter() - t) / a.num
    rows = [("render only, 1 process", render), ("render + JPEG, 1 process", enc)]
    for workers in (1, 2):
        with tempfile.TemporaryDirectory() as d:
            t = time.perf_counter()
            make_synthetic_dataset(d, a.num, 0, a.size, workers=workers, progress=False)
            rows.append((f"make-data to disk, {workers} proc", (time.perf_counter() - t) / a.num))
    print(f"{'stage (' + str(a.size) + ' px)':<32}{'ms/image':>10}{'images/s':>10}")
    for name, dt in rows:
        print(f"{name:<32}{dt * 1e3:>10.2f}{1 / dt:>10.0f}")


if __name__ == "__main__":
    main()
