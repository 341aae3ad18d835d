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

__all__ = ["make_synthetic_dataset", "make_sequence_dataset"]


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


def _render_sequence(job: tuple[SceneSpec, int]) -> list[tuple]:
    from .sequences import motion_rng, synthetic_arm_motion

    spec, length = job
    base = spec.render()
    motion = synthetic_arm_motion(base.keypoints, length, motion_rng(spec.seed, spec.index), (spec.size, spec.size))
    frames = []
    for t in range(length):
        s = base if t == 0 else spec.render(keypoints=motion[t])
        s.meta["scene"] = spec.to_dict()
        frames.append((s, encode_image(s.image, ".jpg", 95)))
    return frames


def make_sequence_dataset(out: "str | Path", sequences: int, length: int, seed: int = 0, size: int = 384,
                          pose_range: str = "narrow", passenger_prob: float = 0.3, workers: "int | None" = None,
                          progress: bool = True, passenger_pose_range: "str | None" = None) -> Path:
    """Write ``sequences`` clips of ``length`` frames of smooth arm motion as one COCO dataset
    in ``out`` (``make-data --sequences N --length T``); returns the JSON path.

    Clip ``i`` is scene ``(seed, i)`` (:class:`~posesynth.datasets.synthetic.SceneSpec`, as
    ``make-data`` draws it) whose people move their arms as
    :func:`~posesynth.datasets.sequences.synthetic_arm_motion` says (within joint limits, exact
    bone lengths, torso still), each frame drawn with ``render_scene(..., keypoints=kp_t)``;
    frame 0 is the scene's own image.  Image entries carry ``"video_id"`` (``i + 1``) and
    ``"frame_id"`` (``0 .. length - 1``) and the scene under ``posesynth.scene``; annotations
    carry ``"track_id"`` (the person's order in the scene, passenger first).  The output is
    the same for any ``workers``.
    """
    out = Path(out)
    if sequences < 1 or length < 2:
        raise ValueError("sequences must be at least 1 and length at least 2")
    writer = CocoWriter(out, DRIVER9, ".jpg", info={
        "description": "posesynth synthetic driver scenes with smooth arm motion", "seed": seed, "size": size,
        "pose_range": pose_range, "passenger_prob": passenger_prob,
        "passenger_pose_range": passenger_pose_range or pose_range, "sequences": sequences, "length": length})
    jobs = [(SceneSpec(seed, i, size, pose_range, passenger_prob, passenger_pose_range), length)
            for i in range(sequences)]
    workers = min(workers if workers is not None else (os.cpu_count() or 1), max(sequences // 2, 1))
    t0 = time.perf_counter()
    bar = tqdm(total=sequences * length, desc=f"make-data {out.name}", unit="img", disable=not progress)

    def add(vid: int, frames: list[tuple]) -> None:
        for t, (s, enc) in enumerate(frames):
            n_ann = len(writer.annotations)
            writer.add(s, encoded=enc)
            writer.images[-1]["video_id"] = vid + 1
            writer.images[-1]["frame_id"] = t
            for p, ann in enumerate(writer.annotations[n_ann:]):
                ann["track_id"] = p
            bar.update()

    if workers > 1:
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        with ctx.Pool(workers) as pool:
            for vid, frames in enumerate(pool.imap(_render_sequence, jobs)):
                add(vid, frames)
    else:
        for vid, job in enumerate(jobs):
            add(vid, _render_sequence(job))
    bar.close()
    path = writer.close()
    if progress:
        dt = time.perf_counter() - t0
        print(f"wrote {sequences} sequences of {length} frames ({sequences * length} images) to {out} "
              f"({sequences * length / max(dt, 1e-9):.0f} images/s)")
    return path
