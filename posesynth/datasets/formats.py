"""Readers for other keypoint formats, and :func:`open_dataset` that picks the right one.

- MPII (mmpose's JSON list of ``{image, joints (16 x [x, y]), joints_vis}``), returned in
  ``coco17`` or ``driver9``.
- BlazePose-33 per-frame keypoints of a video (a JSON list of frames of 33 ``[x, y, z]``
  in pixels, beside a video with the same stem), returned in ``coco17`` or ``driver9``.
- COCO keypoint datasets (:class:`~posesynth.datasets.coco.CocoKeypointDataset`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from ..errors import DatasetError
from .coco import CocoKeypointDataset, ErrorPolicy
from .convert import convert_keypoints
from .layouts import COCO17, KeypointLayout, get_layout
from .sample import Sample

VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm")
__all__ = ["KeypointSource", "MpiiDataset", "BlazePoseVideoDataset", "open_dataset"]


class KeypointSource(Protocol):
    """Anything that gives :class:`Sample` objects by index in one layout."""

    layout: KeypointLayout

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Sample: ...


def _read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None


class MpiiDataset:
    """MPII Human Pose annotations (one person per entry; entries of one image are merged)."""

    def __init__(self, path: "str | Path", image_dir: "str | Path | None" = None,
                 layout: "str | KeypointLayout" = "coco17") -> None:
        self.path = Path(path)
        self.image_dir = Path(image_dir) if image_dir else self.path.parent
        self.layout = get_layout(layout)
        data = _read_json(self.path)
        if not isinstance(data, list):
            raise DatasetError(f"{self.path}: expected a list of MPII entries")
        by_image: dict[str, list[np.ndarray]] = {}
        for i, e in enumerate(data):
            try:
                joints = np.asarray(e["joints"], np.float32).reshape(16, 2)
                vis = np.asarray(e["joints_vis"], np.float32).reshape(16, 1)
            except (KeyError, ValueError, TypeError):
                raise DatasetError(f"{self.path}: entry {i} needs 'joints' (16 x [x, y]) and 'joints_vis' (16)") from None
            kp = np.concatenate([joints, np.where(vis > 0, 2.0, 0.0)], axis=1)
            by_image.setdefault(e["image"], []).append(kp)
        self.items = sorted(by_image.items())

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Sample:
        name, kps = self.items[index]
        path = self.image_dir / name
        bgr = cv2.imread(str(path))
        if bgr is None:
            raise DatasetError(f"{path}: cannot read image (entry '{name}' of {self.path})")
        kp = convert_keypoints(np.stack(kps), "mpii16", self.layout)
        masks = np.zeros((self.layout.num_masks,) + bgr.shape[:2], np.uint8)
        return Sample(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), kp, masks, index + 1, name)


class BlazePoseVideoDataset:
    """Frames of a video with per-frame BlazePose-33 keypoints (one person per frame).

    Keypoints inside the frame are marked visible (v=2), others unlabelled.
    """

    def __init__(self, path: "str | Path", video: "str | Path | None" = None,
                 layout: "str | KeypointLayout" = "coco17") -> None:
        self.path = Path(path)
        self.layout = get_layout(layout)
        if video is None:
            stem = self.path.name.split(".")[0]
            cands = [self.path.parent / (stem + ext) for ext in VIDEO_EXTS]
            cands = [c for c in cands if c.exists()]
            if not cands:
                raise DatasetError(f"{self.path}: no video named {stem}{{{','.join(VIDEO_EXTS)}}} beside it")
            video = cands[0]
        self.video = Path(video)
        frames = _read_json(self.path)
        try:
            self.frames = np.asarray(frames, np.float32)[..., :2]
            assert self.frames.ndim == 3 and self.frames.shape[1] == 33
        except (ValueError, AssertionError):
            raise DatasetError(f"{self.path}: expected a list of frames of 33 [x, y, z] keypoints") from None
        self._cap = None

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> Sample:
        if self._cap is None:
            self._cap = cv2.VideoCapture(str(self.video))
            if not self._cap.isOpened():
                raise DatasetError(f"{self.video}: cannot open video")
        self._cap.set(cv2.CAP_PROP_POS_FRAMES, index)
        ok, bgr = self._cap.read()
        if not ok:
            raise DatasetError(f"{self.video}: cannot read frame {index}")
        h, w = bgr.shape[:2]
        xy = self.frames[index]
        inside = (xy[:, 0] >= 0) & (xy[:, 0] <= w - 1) & (xy[:, 1] >= 0) & (xy[:, 1] <= h - 1)
        kp = np.concatenate([xy, np.where(inside, 2.0, 0.0)[:, None]], axis=1)[None]
        kp = convert_keypoints(kp, "blazepose33", self.layout)
        masks = np.zeros((self.layout.num_masks, h, w), np.uint8)
        return Sample(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), kp, masks, index + 1, f"frame_{index:04d}")

    def __getstate__(self):  # VideoCapture does not pickle (DataLoader workers)
        d = dict(self.__dict__)
        d["_cap"] = None
        return d


def open_dataset(path: "str | Path", layout: "str | Path | KeypointLayout | None" = None,
                 on_error: ErrorPolicy = "raise", image_dir: "str | Path | None" = None) -> KeypointSource:
    """Open a keypoint dataset, recognising its format.

    ``path`` may be a COCO dataset folder (with ``annotations.json``), a COCO JSON file,
    an MPII JSON list, or a BlazePose per-frame JSON beside its video.
    """
    p = Path(path)
    if p.is_dir():
        if not (p / "annotations.json").exists():
            raise DatasetError(f"{p}: not a dataset folder (no annotations.json inside)")
        return CocoKeypointDataset(p, image_dir=image_dir, layout=layout, on_error=on_error)
    if not p.exists():
        raise DatasetError(f"{p}: no such file or folder")
    if p.suffix != ".json":
        raise DatasetError(f"{p}: expected a dataset folder or a .json annotation file")
    with open(p, "rb") as fh:
        head = fh.read(4096).lstrip()
    if head.startswith(b"{"):
        return CocoKeypointDataset(p, image_dir=image_dir, layout=layout, on_error=on_error)
    data = _read_json(p)
    if isinstance(data, list) and data and isinstance(data[0], dict) and "joints" in data[0]:
        return MpiiDataset(p, image_dir=image_dir, layout=layout or COCO17)
    if isinstance(data, list) and data and isinstance(data[0], list) and len(data[0]) == 33:
        return BlazePoseVideoDataset(p, layout=layout or COCO17)
    raise DatasetError(f"{p}: unrecognised keypoint format (expected COCO, MPII or BlazePose-33 JSON)")
