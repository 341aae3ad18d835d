"""``posesynth convert`` and ``posesynth merge``: write readable keypoint sources as a new dataset.

Sources: a COCO dataset or JSON, an MPII JSON list, BlazePose-33 per-frame keypoints beside
their video, or several of them (:func:`~posesynth.datasets.formats.open_dataset`).

COCO output (:func:`convert_dataset`, :func:`merge_datasets`): ``annotations.json`` and
``images/`` (and ``masks/`` for non-empty masks), readable by every posesynth command:

- Image files are copied byte for byte (no re-encoding); video frames are read in order,
  never by seeking, and written as JPEG (quality 95).  Non-empty masks are written as 8-bit
  PNG (0 or 255); an empty one has no entry (the category declares the mask, so it reads as
  empty); a mask the source does not label gets an explicit ``null`` (it reads as unlabelled).
- Keypoints are converted to ``layout`` (by keypoint name); the category records the layout's
  limbs, flip pairs, OKS sigmas and masks.
- ``convert`` keeps a COCO source's image ids (``merge`` numbers the images 1..N in order), and
  both keep bounding boxes, ``video_id``/``frame_id`` (PoseTrack's ``vid_id`` is written as
  ``video_id``), ``track_id`` and posesynth records.  Video frames get ``video_id`` (the video's
  file stem), ``frame_id`` (the 0-based frame index) and image id ``frame_id + 1``; their one
  person has ``track_id`` 0.
- Every image entry records where it came from under ``"source"``: the dataset, its file name
  and its image id there.
- Clips keep their frame rate: a top-level ``"videos"`` list (``id``, ``file_name``, ``width``,
  ``height``, ``fps`` of the clip, ``every``: the step between the frames kept), so
  ``transfer`` plays them at their own speed.

YOLO-pose output (:func:`export_yolo`, ``convert --format yolo``): the layout Ultralytics reads
(https://docs.ultralytics.com/datasets/pose/):

- ``images/NNNNNN.ext`` and one ``labels/NNNNNN.txt`` per image, one line per person:
  ``0 cx cy w h x1 y1 v1 ... xK yK vK``; the box (centre and size) and the keypoints are
  divided by the image's width and height (x / W, y / H, as Ultralytics' own COCO converter
  does) and clipped to [0, 1]; ``v`` is COCO's 0, 1, 2 and an unlabelled keypoint is
  ``0 0 0``.  The box is the COCO annotation's where it has one, else the labelled keypoints'
  extent with 10% padding; a person with neither is left out (counted).
- ``data.yaml``: ``path`` (the folder), ``train`` and ``val`` (both ``images``: point ``val`` at
  a held-out export), ``kpt_shape: [K, 3]``, ``flip_idx`` (each keypoint's mirror, from the
  layout's flip pairs) and ``names`` (``0: person``).
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Iterator, Sequence

import cv2
import numpy as np
from tqdm import tqdm

from ..errors import ConfigError, DatasetError, OutputError
from ..io import atomic_write_text, ensure_writable_dir
from .coco import CocoKeypointDataset, CocoWriter, _bbox, encode_image
from .formats import BlazePoseVideoDataset, open_dataset
from .layouts import KeypointLayout
from .multi import MultiSource
from .reading import ErrorPolicy, OutOfFramePolicy
from .sample import Sample, mask_labelled

__all__ = ["convert_dataset", "merge_datasets", "export_yolo", "flip_index", "yolo_label_lines"]


# ---- shared ---------------------------------------------------------------------------------
def _origin(ds: Any, i: int, name: str) -> tuple[Any, int, str]:
    """``(reader, index in it, its name)`` of item ``i`` (the part of a combined source)."""
    if isinstance(ds, MultiSource):
        k, j = ds.source_of(i)
        return ds.parts[k], j, ds.names[k]
    return ds, i, name


def _readers(ds: Any, name: str) -> list[tuple[Any, str]]:
    return list(zip(ds.parts, ds.names)) if isinstance(ds, MultiSource) else [(ds, name)]


def _samples(ds: Any, indices: Sequence[int]) -> Iterator[tuple[int, "Sample | DatasetError"]]:
    """``(index, sample or the error reading it)``; video frames of one clip read in order."""
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
    anns = getattr(getattr(ds, "coco", None), "anns", {}) if isinstance(ds, CocoKeypointDataset) else {}
    for p, aid in enumerate(s.meta.get("ann_ids") or [None] * s.num_people):
        b = anns.get(aid, {}).get("bbox") if aid is not None else None
        ok = isinstance(b, list) and len(b) == 4 and all(isinstance(v, (int, float)) for v in b)
        boxes.append([float(v) for v in b] if ok else _bbox(s.keypoints[p], s.width, s.height))
    return boxes


def _write_image(reader: Any, j: int, s: Sample, folder: Path, stem: str) -> str:
    """Copy the image file of ``reader``'s item ``j`` byte for byte (or encode a video frame as
    JPEG) to ``folder/stem.ext``; returns the file name."""
    path = reader.image_path(j) if hasattr(reader, "image_path") else None
    if path is not None:
        fname = stem + (path.suffix.lower() or ".jpg")
        try:
            shutil.copyfile(path, folder / fname)
        except OSError as e:
            raise OSError(e.errno, e.strerror, str(folder / fname)) from e
        return fname
    fname = stem + ".jpg"
    (folder / fname).write_bytes(encode_image(s.image, ".jpg", 95))
    return fname


def _new_folder(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise OutputError(f"{out}: already exists and is not empty; choose a new --out")
    ensure_writable_dir(out)


def _select(ds: Any, src: Any, every: int, frames: "tuple[int, int | None] | None") -> range:
    if every < 1:
        raise ConfigError(f"--every must be at least 1, not {every}")
    start, stop = frames if frames is not None else (0, None)
    if start < 0 or (stop is not None and stop <= start):
        raise ConfigError(f"--frames {start}:{'' if stop is None else stop}: give START:STOP with 0 <= START < STOP "
                          "(STOP may be left out)")
    indices = range(min(start, len(ds)), len(ds) if stop is None else min(stop, len(ds)), every)
    if not indices:
        raise ConfigError(f"{src}: --frames {start}:{'' if stop is None else stop} selects none of its {len(ds)} "
                          "samples")
    return indices


def _videos(ds: Any, name: str, every: int, used: "set[Any]") -> list[dict[str, Any]]:
    """The output's ``"videos"`` list: each clip whose frames were written, with its frame rate
    and the step between the frames kept (the source's step times ``every``)."""
    out: dict[Any, dict[str, Any]] = {}
    for reader, rname in _readers(ds, name):
        if isinstance(reader, BlazePoseVideoDataset):
            vid = reader.video.stem
            if vid in used:
                out[vid] = {"id": vid, "file_name": reader.video.name, "width": reader.width,
                            "height": reader.height, "fps": reader.fps, "every": every, "source": rname}
        for v in getattr(reader, "videos", None) or []:
            if v.get("id") in used and v.get("id") not in out:
                step = v.get("every", 1) if isinstance(v.get("every"), int) and v.get("every", 0) > 0 else 1
                out[v["id"]] = {**v, "every": step * every}
    return list(out.values())


# ---- COCO -----------------------------------------------------------------------------------
def _write_coco(ds: Any, indices: Sequence[int], out: Path, src_name: str, info: dict[str, Any], renumber: bool,
                every: int, progress: bool, desc: str) -> dict[str, Any]:
    _new_folder(out)
    writer = CocoWriter(out, ds.layout, ".jpg", info=info)
    used: set[int] = set()
    videos_used: set[Any] = set()
    people = 0
    bar = tqdm(total=len(indices), desc=desc, unit="img", disable=not progress)
    try:
        for i, s in _samples(ds, indices):
            bar.update()
            if isinstance(s, DatasetError):
                ds.problems.fail(str(s), s.kind)
                continue
            reader, j, rname = _origin(ds, i, src_name)
            if renumber:
                image_id = len(writer.images) + 1
            else:
                image_id = s.image_id if isinstance(s.image_id, int) and s.image_id > 0 and s.image_id not in used \
                    else max(used | {0}) + 1
            used.add(image_id)
            stem = f"{image_id:06d}"
            fname = _write_image(reader, j, s, out / "images", stem)
            entry: dict[str, Any] = {"id": image_id, "file_name": fname, "width": s.width, "height": s.height}
            refs = {}
            for mname, m, lab in zip(ds.layout.masks, s.masks, mask_labelled(s)):
                if not lab:   # unlabelled: an explicit null (no entry would read as empty: the category declares it)
                    refs[mname] = None
                elif m.any():
                    rel = f"masks/{stem}_{mname}.png"
                    (out / "masks").mkdir(exist_ok=True)
                    ok, buf = cv2.imencode(".png", (np.asarray(m) > 0).astype(np.uint8) * 255)
                    (out / rel).write_bytes(buf.tobytes())
                    refs[mname] = rel
            if refs:
                entry["masks"] = refs
            for key in ("video_id", "frame_id"):
                if s.meta.get(key) is not None:
                    entry[key] = s.meta[key]
            if s.meta.get("video_id") is not None:
                videos_used.add(s.meta["video_id"])
            entry["source"] = {"dataset": rname, "file_name": s.file_name, "image_id": s.image_id}
            if isinstance(reader, CocoKeypointDataset):
                s.meta["bboxes"] = _source_bboxes(reader, s)
            n_before = len(writer.annotations)
            writer.add(s, image_id, entry=entry)
            tracks = s.meta.get("track_ids") or ([0] * s.num_people if isinstance(reader, BlazePoseVideoDataset)
                                                 else None)
            if tracks:
                for ann, t in zip(writer.annotations[n_before:], tracks):
                    if t is not None:
                        ann["track_id"] = t
            people += s.num_people
        bar.close()
        if not writer.images:
            raise DatasetError(f"{src_name}: no sample could be read ({ds.problems.summary()}); nothing written",
                               "empty dataset")
        videos = _videos(ds, src_name, every, videos_used)
        if videos:
            writer.extra["videos"] = videos
    except BaseException:
        bar.close()
        shutil.rmtree(out, ignore_errors=True)   # incomplete (no annotations.json yet), and made by us
        raise
    path = writer.close()
    return {"annotations": path, "images": len(writer.images), "people": people, "skipped": ds.skipped,
            "problems": ds.problem_counts(), "layout": ds.layout.name, "notes": list(ds.notes),
            "videos": writer.extra.get("videos", [])}


def convert_dataset(src: "str | Path", out: "str | Path", layout: "str | Path | KeypointLayout | None" = None,
                    every: int = 1, on_error: ErrorPolicy = "skip", image_dir: "str | Path | None" = None,
                    out_of_frame: OutOfFramePolicy = "unlabel", progress: bool = True,
                    frames: "tuple[int, int | None] | None" = None) -> dict[str, Any]:
    """Write ``src`` as a COCO dataset in the new folder ``out``; see the module docstring.

    Args:
        src: any source :func:`~posesynth.datasets.formats.open_dataset` reads (several too).
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
        "layout": name, "notes": [...], "videos": [...]}``.  Nothing is written when the source
        has no usable sample.
    """
    ds = open_dataset(src, layout=layout, on_error=on_error, image_dir=image_dir, out_of_frame=out_of_frame)
    indices = _select(ds, src, every, frames)
    info = {"description": "converted by posesynth", "source": str(src), "every": every, "out_of_frame": out_of_frame,
            **({"frames": list(frames)} if frames is not None else {})}
    return _write_coco(ds, indices, Path(out), str(src), info, False, every, progress, f"convert {Path(str(src)).name}")


def merge_datasets(sources: Sequence["str | Path"], out: "str | Path",
                   layout: "str | Path | KeypointLayout | None" = None, on_error: ErrorPolicy = "skip",
                   image_dir: "str | Path | None" = None, out_of_frame: OutOfFramePolicy = "unlabel",
                   progress: bool = True) -> dict[str, Any]:
    """``posesynth merge``: write several datasets as one COCO dataset in the new folder ``out``.

    Every source must have the same layout (``layout`` converts them all to one).  Images are
    numbered 1..N in the order of ``sources`` and annotations 1..M, so ids are unique; each
    image entry records its ``"source"`` (the dataset as given, its file name and its image id
    there).  Otherwise as :func:`convert_dataset`.  Returns its summary.
    """
    if len(sources) < 2:
        raise ConfigError("merge needs at least two datasets")
    parts = [open_dataset(s, layout=layout, on_error=on_error, image_dir=image_dir, out_of_frame=out_of_frame)
             for s in sources]
    ds = MultiSource(parts, None, [str(s) for s in sources], on_error=on_error)
    info = {"description": "merged by posesynth", "sources": [str(s) for s in sources], "out_of_frame": out_of_frame}
    return _write_coco(ds, range(len(ds)), Path(out), ",".join(str(s) for s in sources), info, True, 1, progress,
                       "merge")


# ---- Ultralytics YOLO-pose ---------------------------------------------------------------------
def flip_index(layout: KeypointLayout) -> list[int]:
    """``flip_idx``: for each keypoint, the index of the keypoint it becomes in a mirrored image."""
    idx = list(range(layout.num_keypoints))
    for a, b in layout.flip_pairs:
        idx[a], idx[b] = b, a
    return idx


def yolo_label_lines(keypoints: np.ndarray, boxes: np.ndarray, width: int, height: int) -> list[str]:
    """YOLO-pose label lines for one image.

    Args:
        keypoints: ``(P, K, 3)`` ``[x, y, v]`` in pixels.
        boxes: ``(P, 4)`` COCO boxes ``[x, y, w, h]`` (top-left corner and size, pixels).
        width, height: the image's size.

    Returns one line per person with a box of positive size: ``0 cx cy w h x1 y1 v1 ...``, all
    coordinates divided by the image size and clipped to [0, 1], unlabelled keypoints
    ``0 0 0``.
    """
    kp = np.asarray(keypoints, np.float64)
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    x0 = np.clip(b[:, 0], 0, width)
    y0 = np.clip(b[:, 1], 0, height)
    x1 = np.clip(b[:, 0] + b[:, 2], 0, width)
    y1 = np.clip(b[:, 1] + b[:, 3], 0, height)
    box = np.stack([(x0 + x1) / 2 / width, (y0 + y1) / 2 / height, (x1 - x0) / width, (y1 - y0) / height], 1)
    lab = kp[..., 2] > 0
    xy = np.clip(kp[..., :2] / np.array([width, height], np.float64), 0.0, 1.0)
    pts = np.concatenate([np.where(lab[..., None], xy, 0.0), np.where(lab, kp[..., 2], 0.0)[..., None]], -1)
    lines = []
    for p in np.nonzero((box[:, 2] > 0) & (box[:, 3] > 0))[0]:
        vals = " ".join(f"{v:.6f}" for v in box[p])
        kps = " ".join(f"{x:.6f} {y:.6f} {int(v)}" for x, y, v in pts[p])
        lines.append(f"0 {vals} {kps}".rstrip())
    return lines


def _data_yaml(out: Path, layout: KeypointLayout, src: str) -> str:
    names = ", ".join(layout.keypoints)
    return (f"# Ultralytics YOLO-pose dataset written by posesynth from {src}\n"
            f"# layout {layout.name}: {names}\n"
            f"path: {out.resolve()}\n"
            "train: images\n"
            "val: images  # the training images: point val at a held-out export\n"
            f"kpt_shape: [{layout.num_keypoints}, 3]\n"
            f"flip_idx: [{', '.join(str(i) for i in flip_index(layout))}]\n"
            "names:\n"
            "  0: person\n")


def export_yolo(src: "str | Path", out: "str | Path", layout: "str | Path | KeypointLayout | None" = None,
                every: int = 1, on_error: ErrorPolicy = "skip", image_dir: "str | Path | None" = None,
                out_of_frame: OutOfFramePolicy = "unlabel", progress: bool = True,
                frames: "tuple[int, int | None] | None" = None) -> dict[str, Any]:
    """Write ``src`` as an Ultralytics YOLO-pose dataset in the new folder ``out`` (see the
    module docstring).  Options as for :func:`convert_dataset`.

    Returns ``{"yaml": path, "images": n, "people": n, "people_without_box": n, "skipped": n,
    "problems": {...}, "layout": name, "notes": [...], "export_notes": [...]}`` (``export_notes``:
    what the export itself says: masks left out, flipping, people without a box).
    """
    ds = open_dataset(src, layout=layout, on_error=on_error, image_dir=image_dir, out_of_frame=out_of_frame)
    indices = _select(ds, src, every, frames)
    out = Path(out)
    _new_folder(out)
    lay = ds.layout
    notes: list[str] = []     # what this export says (the reader's own notes are in ds.notes)
    if lay.num_masks:
        notes.append(f"the masks ({', '.join(lay.masks)}) are not part of YOLO-pose labels: not exported")
    if not lay.can_flip:
        notes.append(f"layout '{lay.name}' has left/right keypoints without a flip pair: its flip_idx leaves them in "
                     "place, so train with fliplr=0")
    (out / "images").mkdir()
    (out / "labels").mkdir()
    n_img = people = no_box = 0
    bar = tqdm(total=len(indices), desc=f"convert {Path(str(src)).name} (yolo)", unit="img", disable=not progress)
    try:
        for i, s in _samples(ds, indices):
            bar.update()
            if isinstance(s, DatasetError):
                ds.problems.fail(str(s), s.kind)
                continue
            reader, j, _ = _origin(ds, i, str(src))
            n_img += 1
            stem = f"{n_img:06d}"
            _write_image(reader, j, s, out / "images", stem)
            boxes = _source_bboxes(reader, s) if isinstance(reader, CocoKeypointDataset) else \
                [_bbox(kp, s.width, s.height) for kp in s.keypoints]
            lines = yolo_label_lines(s.keypoints, np.asarray(boxes, np.float64).reshape(-1, 4), s.width, s.height)
            people += len(lines)
            no_box += s.num_people - len(lines)
            (out / "labels" / f"{stem}.txt").write_text("".join(line + "\n" for line in lines))
        bar.close()
        if not n_img:
            raise DatasetError(f"{src}: no sample could be read ({ds.problems.summary()}); nothing written",
                               "empty dataset")
        if no_box:
            notes.append(f"{no_box} people with no labelled keypoint and no box were left out")
        atomic_write_text(out / "data.yaml", _data_yaml(out, lay, str(src)))
    except BaseException:
        bar.close()
        shutil.rmtree(out, ignore_errors=True)
        raise
    return {"yaml": out / "data.yaml", "images": n_img, "people": people, "people_without_box": no_box,
            "skipped": ds.skipped, "problems": ds.problem_counts(), "layout": lay.name,
            "notes": list(ds.notes) + notes, "export_notes": notes}
