"""Writing a synthetic driver dataset to disk (``posesynth make-data``)."""
from __future__ import annotations

import multiprocessing as mp
import os
import time
from pathlib import Path

from tqdm import tqdm

from .coco import CocoWriter, encode_image
from .layouts import DRIVER9
from .synthetic import SceneSpec

__all__ = ["make_synthetic_dataset"]


def _render(spec: SceneSpec) -> tuple:
    s = spec.render()
    s.meta["scene"] = spec.to_dict()  # recorded per image, so the scene can be redrawn
    return s, encode_image(s.image, ".jpg", 95)


def make_synthetic_dataset(out: "str | Path", num: int, seed: int = 0, size: int = 384,
                           pose_range: str = "narrow", passenger_prob: float = 0.3,
                           workers: "int | None" = None, progress: bool = True,
                           passenger_pose_range: "str | None" = None) -> Path:
    """Render ``num`` scenes and write them as a COCO dataset in ``out``; returns the JSON path.

    Scene ``i`` depends only on ``(seed, i)``, so the output is the same for any ``workers``.
    Each image entry records its :class:`~posesynth.datasets.synthetic.SceneSpec` under
    ``posesynth.scene``.  ``passenger_pose_range`` defaults to ``pose_range``.
    """
    out = Path(out)
    writer = CocoWriter(out, DRIVER9, ".jpg", info={
        "description": "posesynth synthetic driver scenes", "seed": seed, "size": size,
        "pose_range": pose_range, "passenger_prob": passenger_prob,
        "passenger_pose_range": passenger_pose_range or pose_range, "num": num})
    jobs = [SceneSpec(seed, i, size, pose_range, passenger_prob, passenger_pose_range) for i in range(num)]
    workers = min(workers if workers is not None else (os.cpu_count() or 1), max(num // 16, 1))
    t0 = time.perf_counter()
    bar = tqdm(total=num, desc=f"make-data {out.name}", unit="img", disable=not progress)
    if workers > 1:
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        with ctx.Pool(workers) as pool:
            for s, enc in pool.imap(_render, jobs, chunksize=8):
                writer.add(s, encoded=enc)
                bar.update()
    else:
        for job in jobs:
            s, enc = _render(job)
            writer.add(s, encoded=enc)
            bar.update()
    bar.close()
    path = writer.close()
    if progress:
        dt = time.perf_counter() - t0
        print(f"wrote {num} images to {out} ({num / max(dt, 1e-9):.0f} images/s)")
    return path
