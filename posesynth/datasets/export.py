"""``posesynth convert``: write any readable keypoint source as a COCO dataset with its images.

Sources: a COCO dataset or JSON, an MPII JSON list, or BlazePose-33 per-frame keypoints beside
their video (:func:`~posesynth.datasets.formats.open_dataset`).  The output folder holds
``annotations.json`` and ``images/`` (and ``masks/`` for non-empty masks), readable by every
posesynth command:

- Image files are copied byte for byte (no re-encoding); video frames are read in order,
  never by seeking, and written as JPEG (quality 95).
- Keypoints are converted to ``layout`` (by keypoint name); the category records the layout's
  limbs, flip pairs, OKS sigmas and masks.
- COCO sources keep their image ids, bounding boxes, ``video_id``/``frame_id`` (PoseTrack's
  ``vid_id`` is written as ``video_id``), ``track_id`` and posesynth records.  Video frames get
  ``video_id`` (the video's file stem), ``frame_id`` (the 0-based frame index) and image id
  ``frame_id + 1``; their one person has ``track_id`` 0.
- Every image entry records where it came from under ``"source"``.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Iterator

import cv2
import numpy as np
from tqdm import tqdm

from ..errors import ConfigError, DatasetError, OutputError
from ..io import ensure_writable_dir
from .coco import CocoKeypointDataset, CocoWriter, _bbox, encode_image
from .formats import BlazePoseVideoDataset, open_dataset
from .layouts import KeypointLayout
from .reading import ErrorPolicy, OutOfFramePolicy
from .sample import Sample

__all__ = ["convert_dataset"]


def _samples(ds: Any, indices: range) -> Iterator[tuple[int, "Sample | DatasetError"]]:
    if isinstance(ds, BlazePoseVideoDataset):
        yield from ds.iter_frames(indices)
        return
    for i in indices:
        try:
            yield i, ds.load(i)
        except DatasetError as err:
            yield i, err


def _source_bboxes(ds: Any, s: Sample) -> "list[list[float]]":
    """``(P, 4)`` boxes: the COCO annotation's own where it has one, else from the keypoints."""
    boxes = []
    anns = getattr(getattr(ds, "coco", None), "anns", {})
    for p, aid in enumerate(s.meta.get("ann_ids") or [None] * s.num_people):
        b = anns.get(aid, {}).get("bbox") if aid is not None else None
        ok = isinstance(b, list) and len(b) == 4 and all(isinstance(v, (int, float)) for v in b)
        boxes.append([float(v) for v in b] if ok else _bbox(s.keypoints[p], s.width, s.height))
    return boxes


def convert_dataset(src: "str | Path", out: "str | Path", layout: "str | Path | KeypointLayout | None" = None,
                    every: int = 1, on_error: ErrorPolicy = "skip", image_dir: "str | Path | None" = None,
                    out_of_frame: OutOfFramePolicy = "unlabel", progress: bool = True,
                    frames: "tuple[int, int | None] | None" = None) -> dict[str, Any]:
    """Write ``src`` as a COCO dataset in the new folder ``out``; see the module docstring.

    Args:
        src: any source :func:`~posesynth.datasets.formats.open_dataset` reads.
        out: output folder; it must not exist or be empty.
        layout: convert the keypoints to this layout (default: the source's own; coco17 for
            MPII and BlazePose).
        every: keep every N-th sample (video frame), starting with the first kept.
        frames: ``(start, stop)``: keep only samples ``start <= i < stop`` (0-based, in the
            source's order: frame order for a video; ``stop`` None: to the end), e.g. a
            training and a held-out part of one clip.
        on_error, image_dir, out_of_frame: as for ``open_dataset``.

    Returns:
        ``{"annotations": path, "images": n, "people": n, "skipped": n, "problems": {kind: n},
        "layout": name}``.  Nothing is written when the source has no usable sample.
    """
    if every < 1:
        raise ConfigError(f"--every must be at least 1, not {every}")
    start, stop = frames if frames is not None else (0, None)
    if start < 0 or (stop is not None and stop <= start):
        raise ConfigError(f"--frames {start}:{'' if stop is None else stop}: give START:STOP with 0 <= START < STOP "
                          "(STOP may be left out)")
    ds = open_dataset(src, layout=layout, on_error=on_error, image_dir=image_dir, out_of_frame=out_of_frame)
    indices = range(min(start, len(ds)), len(ds) if stop is None else min(stop, len(ds)), every)
    if not indices:
        raise ConfigError(f"{src}: --frames {start}:{'' if stop is None else stop} selects none of its {len(ds)} "
                          "samples")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise OutputError(f"{out}: already exists and is not empty; choose a new --out")
    ensure_writable_dir(out)
    writer = CocoWriter(out, ds.layout, ".jpg", info={
        "description": "converted by posesynth", "source": str(src), "every": every, "out_of_frame": out_of_frame,
        **({"frames": [start, stop]} if frames is not None else {})})
    used: set[int] = set()
    people = 0
    bar = tqdm(total=len(indices), desc=f"convert {Path(src).name}", unit="img", disable=not progress)
    try:
        for i, s in _samples(ds, indices):
            bar.update()
            if isinstance(s, DatasetError):
                ds.problems.fail(str(s), s.kind)
                continue
            image_id = s.image_id if isinstance(s.image_id, int) and s.image_id > 0 and s.image_id not in used \
                else max(used | {0}) + 1
            used.add(image_id)
            stem = f"{image_id:06d}"
            path = ds.image_path(i) if hasattr(ds, "image_path") else None
            if path is not None:
                fname = stem + (path.suffix.lower() or ".jpg")
                try:
                    shutil.copyfile(path, out / "images" / fname)
                except OSError as e:
                    raise OSError(e.errno, e.strerror, str(out / "images" / fname)) from e
            else:
                fname = stem + ".jpg"
                (out / "images" / fname).write_bytes(encode_image(s.image, ".jpg", 95))
            entry: dict[str, Any] = {"id": image_id, "file_name": fname, "width": s.width, "height": s.height}
            refs = {}
            for name, m in zip(ds.layout.masks, s.masks):
                if m.any():
                    rel = f"masks/{stem}_{name}.png"
                    (out / "masks").mkdir(exist_ok=True)
                    ok, buf = cv2.imencode(".png", (np.asarray(m) > 0).astype(np.uint8) * 255)
                    (out / rel).write_bytes(buf.tobytes())
                    refs[name] = rel
            if refs:
                entry["masks"] = refs
            for key in ("video_id", "frame_id"):
                if s.meta.get(key) is not None:
                    entry[key] = s.meta[key]
            entry["source"] = {"dataset": str(src), "file_name": s.file_name, "image_id": s.image_id}
            s.meta["bboxes"] = _source_bboxes(ds, s) if isinstance(ds, CocoKeypointDataset) else None
            if s.meta["bboxes"] is None:
                del s.meta["bboxes"]
            n_before = len(writer.annotations)
            writer.add(s, image_id, entry=entry)
            tracks = s.meta.get("track_ids") or ([0] * s.num_people if isinstance(ds, BlazePoseVideoDataset) else None)
            if tracks:
                for ann, t in zip(writer.annotations[n_before:], tracks):
                    if t is not None:
                        ann["track_id"] = t
            people += s.num_people
        bar.close()
        if not writer.images:
            raise DatasetError(f"{src}: no sample could be read ({ds.problems.summary()}); nothing written",
                               "empty dataset")
    except BaseException:
        bar.close()
        shutil.rmtree(out, ignore_errors=True)   # incomplete (no annotations.json yet), and made by us
        raise
    path = writer.close()
    return {"annotations": path, "images": len(writer.images), "people": people, "skipped": ds.skipped,
            "problems": ds.problem_counts(), "layout": ds.layout.name, "notes": list(ds.notes)}
