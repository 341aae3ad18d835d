"""``posesynth extract``: a COCO keypoint dataset of a video's frames and detected keypoints.

Output folder::

    DIR/annotations.json   COCO keypoints in the detector's layout (coco17 for mediapipe and
                           keypointrcnn), plus:
                           - each image entry: "video_id" (the video's file stem, as `convert`
                             writes it) and "frame_id" (the 0-based frame index in the video);
                             image ids are frame_id + 1
                           - a top-level "videos" list: id (the stem), file_name, width, height,
                             fps, every, detector
                           - each annotation: "score" (person), "keypoint_scores" (K), "track_id"
                             0 when one person is kept per frame (--max-people 1), and with
                             mediapipe "blazepose33": [x, y, z, visibility] * 33 (x, y, z in pixels)
    DIR/images/NNNNNN.jpg  the frames (NNNNNN = frame_id + 1)

Keypoints below the detector's confidence, or outside the frame, are written unlabelled
(``v = 0``, coordinates 0), as COCO does.  Frames are read in order, never by seeking.  The
annotation file is rewritten atomically every ``flush_every`` frames and at the end, so it is
always valid.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ..datasets.coco import CocoWriter
from ..datasets.sample import Sample
from ..datasets.video import probe_video, read_frames
from ..errors import ConfigError, DatasetError
from ..io import ensure_writable_dir
from .detectors import Detections, Detector, make_detector

__all__ = ["extract_video", "VideoCocoWriter"]


class VideoCocoWriter(CocoWriter):
    """A :class:`~posesynth.datasets.coco.CocoWriter` whose JSON also lists the source videos."""

    def __init__(self, *args: Any, videos: "list[dict[str, Any]] | None" = None, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.videos = list(videos or [])

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["videos"] = self.videos
        return d


def _round(a: np.ndarray, nd: int = 3) -> list[float]:
    return [round(float(v), nd) for v in np.asarray(a).reshape(-1)]


def extract_video(video: "str | Path", out: "str | Path", every: int = 1, detector: "str | Detector" = "mediapipe",
                  device: str = "cpu", weights: "str | Path | None" = None, max_people: int = 1,
                  min_score: "float | None" = None, image_ext: str = ".jpg", jpeg_quality: int = 95,
                  batch_size: int = 4, flush_every: int = 50, progress: bool = True) -> dict[str, Any]:
    """Detect people in every ``every``-th frame of ``video`` and write a COCO dataset to ``out``.

    Args:
        detector: ``mediapipe``, ``keypointrcnn`` or ``posenet:RUN`` (see
            :func:`~posesynth.posenet.detectors.make_detector`), or a
            :class:`~posesynth.posenet.detectors.Detector` object.
        max_people: people kept per frame, best first (0: all).
        min_score: detector confidence for ``v = 2`` (default: the detector's own).
        image_ext: ``.jpg`` or ``.png`` for the frames.

    Returns:
        a summary: ``frames`` written, ``people``, ``frames_without_person``, ``annotations``
        (the JSON's path), ``layout``, ``fps``, ``size`` ``(H, W)``.
    """
    if every < 1:
        raise ConfigError(f"--every must be at least 1, not {every}")
    if max_people < 0:
        raise ConfigError(f"--max-people must be 0 (all) or more, not {max_people}")
    if image_ext not in (".jpg", ".png"):
        raise ConfigError(f"image_ext must be .jpg or .png, not {image_ext!r}")
    info = probe_video(video)
    out = Path(out)
    if (out / "annotations.json").exists():
        raise DatasetError(f"{out}: already holds a dataset (annotations.json); choose another --out")
    ensure_writable_dir(out)
    if isinstance(detector, str):
        det = make_detector(detector, device=device, weights=weights, min_score=min_score, max_people=max_people,
                            every=every)
        name = detector
    else:
        det, name = detector, getattr(detector, "name", type(detector).__name__)
    vid = Path(video).stem
    video_entry = {"id": vid, "file_name": Path(video).name, "width": info.width, "height": info.height,
                   "fps": info.fps, "every": every, "detector": name}
    writer = VideoCocoWriter(out, det.layout, image_ext=image_ext, jpeg_quality=jpeg_quality,
                             info={"description": f"posesynth extract {Path(video).name} ({name})"},
                             videos=[video_entry])
    total = math.ceil(info.frame_count / every) if info.frame_count else None
    bar = tqdm(total=total, desc="extract", unit="frame", disable=not progress, dynamic_ncols=True)
    stats = {"frames": 0, "people": 0, "frames_without_person": 0}

    def flush(chunk: list[tuple[int, np.ndarray]]) -> None:
        dets = det([f for _, f in chunk])
        for (idx, rgb), d in zip(chunk, dets):
            _add(writer, idx, rgb, d, vid, track=max_people == 1)
            stats["frames"] += 1
            stats["people"] += d.num_people
            stats["frames_without_person"] += d.num_people == 0
            if stats["frames"] % flush_every == 0:
                writer.close()
        bar.update(len(chunk))

    try:
        chunk: list[tuple[int, np.ndarray]] = []
        for idx, rgb in read_frames(video, every=every):
            chunk.append((idx, rgb))
            if len(chunk) == batch_size:
                flush(chunk)
                chunk = []
        if chunk:
            flush(chunk)
        if bar.total != bar.n:  # the container's frame count was approximate
            bar.total = bar.n
            bar.refresh()
    finally:
        bar.close()
        det.close()
    if stats["frames"] == 0:
        raise DatasetError(f"{video}: no frame could be decoded")
    path = writer.close()
    return {**stats, "annotations": str(path), "layout": det.layout.name, "fps": info.fps,
            "size": (info.height, info.width)}


def _add(writer: CocoWriter, frame: int, rgb: np.ndarray, d: Detections, video_id: str, track: bool) -> None:
    kp = d.keypoints.copy()
    kp[..., :2] = np.where(kp[..., 2:] > 0, kp[..., :2], 0.0)   # COCO: unlabelled points at 0
    sample = Sample(rgb, kp, None, frame + 1, "")
    image_id = frame + 1
    entry = writer.write_files(sample, image_id)
    entry["video_id"] = video_id
    entry["frame_id"] = int(frame)
    n_before = len(writer.annotations)
    writer.add(sample, image_id, entry=entry)
    for p, ann in enumerate(writer.annotations[n_before:]):
        ann["score"] = round(float(d.person_scores[p]), 4)
        ann["keypoint_scores"] = _round(d.scores[p], 4)
        if track:
            ann["track_id"] = 0
        for name, arr in d.extra.items():
            ann[name] = _round(arr[p])
