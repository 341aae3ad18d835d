"""Readers for other keypoint formats, and :func:`open_dataset` that picks the right one.

- MPII (mmpose's JSON list of ``{image, joints (16 x [x, y]), joints_vis}``), returned in
  ``coco17`` by default, or any layout that shares enough joint names.
- BlazePose-33 per-frame keypoints of a video (a JSON list of frames of 33 ``[x, y, z]``
  in pixels, beside a video with the same stem), returned in ``coco17`` by default.
- COCO keypoint datasets (:class:`~posesynth.datasets.coco.CocoKeypointDataset`).

Every reader takes the same options: ``on_error`` (``"raise"`` or ``"skip"``),
``out_of_frame`` (see :mod:`posesynth.datasets.reading`), ``allow_empty``; the readers of
image files also take ``image_dir``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Protocol, Sequence

import cv2
import numpy as np

from ..errors import DatasetError
from .coco import CocoKeypointDataset, ErrorPolicy, resolve_layouts
from .convert import convert_keypoints
from .layouts import BLAZEPOSE33, COCO17, MPII16, KeypointLayout, get_layout
from .reading import (ImageResolver, OutOfFramePolicy, OutOfFrameStats, ProblemLog, ReaderBase, check_policies,
                      image_size, out_of_frame_points, read_image)
from .sample import Sample

VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm")
__all__ = ["data_options", "DataOptions", "KeypointSource", "source_annotations", "MpiiDataset", "BlazePoseVideoDataset", "open_dataset", "VIDEO_EXTS"]


class KeypointSource(Protocol):
    """Anything that gives :class:`Sample` objects by index in one layout."""

    layout: KeypointLayout

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Sample: ...

    def annotations(self) -> list[np.ndarray]:
        """Every sample's people ``(P, K, 3)`` in :attr:`layout`, without decoding images."""
        ...


def source_annotations(source: Any) -> list[np.ndarray]:
    """Every sample's people ``(P, K, 3)`` float32 in ``source.layout``: the source's own
    :meth:`KeypointSource.annotations` (every posesynth reader has one and decodes no image),
    else, for a plain sequence of samples, read from the samples."""
    fn = getattr(source, "annotations", None)
    if callable(fn):
        return [np.asarray(a, np.float32) for a in fn()]
    return [np.asarray(source[i].keypoints, np.float32) for i in range(len(source))]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found", "missing file") from None
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}",
                           "malformed JSON") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: cannot read ({e})", "unreadable file") from None


def _empty_message(path: Path, listed: int, what: str, problems: ProblemLog, oof: OutOfFrameStats) -> str:
    parts = []
    if problems.errors:
        parts.append(f"{problems.summary()} skipped")
    if oof.policy == "skip-image" and oof.images:
        parts.append(f"{oof.images} dropped for keypoints outside the image (--out-of-frame skip-image)")
    why = "; ".join(parts) if parts else f"the file lists no {what}"
    return f"{path}: no usable {what} ({listed} listed; {why})"


class MpiiDataset(ReaderBase):
    """MPII Human Pose annotations (one person per entry; entries of one image are merged).

    Args:
        path: the JSON list.
        image_dir: folder of the images (default: found beside the JSON, as for COCO).
        layout: the layout samples come in (default ``coco17``; ``mpii16`` keeps MPII's joints).
        on_error, check_files, out_of_frame, allow_empty: as for
            :class:`~posesynth.datasets.coco.CocoKeypointDataset`.
    """

    def __init__(self, path: "str | Path", image_dir: "str | Path | None" = None,
                 layout: "str | Path | KeypointLayout | None" = "coco17", on_error: ErrorPolicy = "raise",
                 check_files: bool = True, out_of_frame: OutOfFramePolicy = "unlabel",
                 allow_empty: bool = True) -> None:
        check_policies(on_error, out_of_frame)
        self.path = Path(path)
        self.on_error = on_error
        self.out_of_frame = out_of_frame
        self.problems = ProblemLog(str(self.path), on_error)
        self._failed_at_runtime: set[int] = set()
        self._resolver = ImageResolver(self.path.parent, image_dir)
        self.layout = get_layout(layout or COCO17)
        self.source_layout, self._convert, notes = resolve_layouts(MPII16, self.layout, str(self.path))
        for n in notes:
            self.problems.note(n)
        data = _read_json(self.path)
        if not isinstance(data, list):
            raise DatasetError(f"{self.path}: expected a list of MPII entries", "malformed JSON")
        by_image: dict[str, list[np.ndarray]] = {}
        bad: set[str] = set()
        for i, e in enumerate(data):
            try:
                name = e["image"]
                joints = np.asarray(e["joints"], np.float32).reshape(16, 2)
                vis = np.asarray(e["joints_vis"], np.float32).reshape(16, 1)
                if not isinstance(name, str):
                    raise TypeError
            except (KeyError, ValueError, TypeError):
                name = e.get("image") if isinstance(e, dict) and isinstance(e.get("image"), str) else None
                self.problems.fail(f"{self.path}: entry {i} needs 'image', 'joints' (16 x [x, y]) and 'joints_vis' "
                                   f"(16){f': image {name!r} dropped' if name else ': entry dropped'}",
                                   "bad annotation")
                if name:
                    bad.add(name)
                continue
            finite = np.isfinite(joints).all(axis=1, keepdims=True)
            v = np.where((vis > 0) & finite, 2.0, 0.0)
            kp = np.concatenate([np.where(v > 0, joints, 0.0), v], axis=1).astype(np.float32)
            by_image.setdefault(name, []).append(kp)
        self.num_listed = len(by_image) + len(bad - by_image.keys())
        self._oof = OutOfFrameStats(out_of_frame)
        items: list[tuple[str, np.ndarray]] = []
        self.paths: list["Path | None"] = []
        self.sizes: list["tuple[int, int] | None"] = []
        for name, kps in sorted(by_image.items()):
            if name in bad:
                continue
            kp = np.stack(kps)
            path, size = None, None
            if check_files:
                path = self._resolver.resolve(name)
                if path is None:
                    self.problems.fail(f"{self._resolver.not_found(name)} (entry '{name}' of {self.path})",
                                       "missing image")
                    continue
                try:
                    size = image_size(path)
                except DatasetError as err:
                    self.problems.fail(f"{err} (entry '{name}' of {self.path})", err.kind)
                    continue
                kp, _, drop = self._oof.add(kp, *size)
                if drop:
                    continue
            items.append((name, kp))
            self.paths.append(path)
            self.sizes.append(size)
        self.items = items
        msg = self._oof.message(str(self.path))
        if msg:
            self.problems.note(msg)
        self.problems.finish()
        if not self.items and not allow_empty:
            raise DatasetError(_empty_message(self.path, self.num_listed, "images", self.problems, self._oof),
                               "empty dataset")

    @property
    def image_dir(self) -> Path:
        return self._resolver.default_dir

    def __len__(self) -> int:
        return len(self.items)

    def annotations(self) -> list[np.ndarray]:
        """Every sample's people ``(P, K, 3)`` in :attr:`layout`, without decoding an image."""
        return [convert_keypoints(kp, self.source_layout, self.layout) if self._convert else kp.copy()
                for _, kp in self.items]

    def image_path(self, index: int) -> Path:
        name = self.items[index][0]
        path = self.paths[index] or self._resolver.resolve(name)
        if path is None:
            raise DatasetError(f"{self._resolver.not_found(name)} (entry '{name}' of {self.path})", "missing image")
        return path

    def load(self, index: int) -> Sample:
        name, kp = self.items[index]
        path = self.image_path(index)
        try:
            rgb = read_image(path)
        except DatasetError as err:
            raise DatasetError(f"{err} (entry '{name}' of {self.path})", err.kind) from None
        h, w = rgb.shape[:2]
        if self.sizes[index] is None:
            out = out_of_frame_points(kp, w, h)
            if out.any():
                kp = kp.copy()
                kp[out] = 0.0
        if self._convert:
            kp = convert_keypoints(kp, self.source_layout, self.layout)
        masks = np.zeros((self.layout.num_masks, h, w), np.uint8)   # this format has no masks: unlabelled
        return Sample(rgb, kp.copy(), masks, index + 1, name, {"mask_labelled": [False] * self.layout.num_masks})


class BlazePoseVideoDataset(ReaderBase):
    """Frames of a video with per-frame BlazePose-33 keypoints (one person per frame).

    Keypoints are labelled visible (``v = 2``) where finite; those outside the frame follow
    ``out_of_frame``.  Frames are read sequentially where possible (a forward jump of up to
    :attr:`MAX_GRAB` frames is read through, never sought), so in-order access is exact.

    Attributes:
        frames: ``(T, 33, 2)`` the JSON's keypoints (pixels).
        frame_index: ``(N,)`` the video frame of each sample (frames dropped by
            ``out_of_frame="skip-image"`` are left out).
        video: the video file; ``width``, ``height``: its frame size; ``fps``: its frame rate
            (0 when the container does not say).
    """

    MAX_GRAB = 256

    def __init__(self, path: "str | Path", video: "str | Path | None" = None,
                 layout: "str | Path | KeypointLayout | None" = "coco17", on_error: ErrorPolicy = "raise",
                 out_of_frame: OutOfFramePolicy = "unlabel", allow_empty: bool = True) -> None:
        check_policies(on_error, out_of_frame)
        self.path = Path(path)
        self.on_error = on_error
        self.out_of_frame = out_of_frame
        self.problems = ProblemLog(str(self.path), on_error)
        self._failed_at_runtime: set[int] = set()
        self.layout = get_layout(layout or COCO17)
        self.source_layout, self._convert, notes = resolve_layouts(BLAZEPOSE33, self.layout, str(self.path))
        for n in notes:
            self.problems.note(n)
        if video is None:
            stem = self.path.name.split(".")[0]
            cands = [self.path.parent / (stem + ext) for ext in VIDEO_EXTS]
            cands = [c for c in cands if c.exists()]
            if not cands:
                raise DatasetError(f"{self.path}: no video named {stem}{{{','.join(VIDEO_EXTS)}}} beside it",
                                   "missing video")
            video = cands[0]
        self.video = Path(video)
        frames = _read_json(self.path)
        try:
            arr = np.asarray(frames, np.float32)
            if arr.ndim != 3 or arr.shape[1] != 33 or arr.shape[2] < 2:
                raise ValueError
        except (ValueError, TypeError):
            raise DatasetError(f"{self.path}: expected a list of frames of 33 [x, y, z] keypoints",
                               "malformed JSON") from None
        self.frames = arr[..., :2]
        cap = cv2.VideoCapture(str(self.video))
        try:
            if not cap.isOpened():
                raise DatasetError(f"{self.video}: cannot open video", "unreadable video")
            self.width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
            self.height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
            self.video_frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
            fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
            self.fps = fps if np.isfinite(fps) and fps > 0 else 0.0
        finally:
            cap.release()
        if self.width <= 0 or self.height <= 0:
            raise DatasetError(f"{self.video}: cannot read the video's frame size", "unreadable video")
        if 0 < self.video_frames < len(self.frames):
            self.problems.note(f"{self.path}: {len(self.frames)} frames of keypoints, but {self.video} has "
                               f"{self.video_frames}: the frames beyond cannot be read")
        finite = np.isfinite(self.frames).all(axis=2)
        kp = np.concatenate([np.where(finite[..., None], self.frames, 0.0),
                             np.where(finite, 2.0, 0.0)[..., None]], axis=2).astype(np.float32)   # (T, 33, 3)
        self._oof = OutOfFrameStats(out_of_frame)
        out = out_of_frame_points(kp, self.width, self.height)                                  # (T, 33)
        n_out = out.any(axis=1)
        self._oof.points, self._oof.people, self._oof.images = int(out.sum()), int(n_out.sum()), int(n_out.sum())
        keep_frame = np.ones(len(kp), bool)
        people = np.ones(len(kp), bool)                                                           # 1 person per frame
        if out_of_frame == "unlabel":
            kp[out] = 0.0
        elif out_of_frame == "clip":
            kp[..., 0] = np.where(out, np.clip(kp[..., 0], 0, self.width - 1), kp[..., 0])
            kp[..., 1] = np.where(out, np.clip(kp[..., 1], 0, self.height - 1), kp[..., 1])
        elif out_of_frame == "skip-person":
            people = ~n_out
        else:
            keep_frame = ~n_out
        self.frame_index = np.nonzero(keep_frame)[0]
        self._keypoints = kp
        self._people = people
        msg = self._oof.message(str(self.path))
        if msg:
            self.problems.note(msg)
        self._cap = None
        self._pos = 0
        if not len(self.frame_index) and not allow_empty:
            raise DatasetError(_empty_message(self.path, len(self.frames), "frames", self.problems, self._oof),
                               "empty dataset")

    def __len__(self) -> int:
        return len(self.frame_index)

    def annotations(self) -> list[np.ndarray]:
        """Every sample's person ``(P, K, 3)`` (``P`` 0 or 1) in :attr:`layout`, without reading the video."""
        out = []
        for frame in self.frame_index:
            kp = self._keypoints[frame][None] if self._people[frame] else np.zeros((0, 33, 3), np.float32)
            out.append(convert_keypoints(kp, self.source_layout, self.layout) if self._convert else kp.copy())
        return out

    def _read_frame(self, frame: int, seek: bool = True) -> np.ndarray:
        if self._cap is None:
            self._cap = cv2.VideoCapture(str(self.video))
            self._pos = 0
            if not self._cap.isOpened():
                raise DatasetError(f"{self.video}: cannot open video", "unreadable video")
        if frame != self._pos:
            if self._pos < frame and (frame - self._pos <= self.MAX_GRAB or not seek):
                while self._pos < frame:
                    if not self._cap.grab():
                        raise DatasetError(f"{self.video}: the video ends before frame {frame} "
                                           f"(after {self._pos} frames)", "unreadable frame")
                    self._pos += 1
            elif seek:
                self._cap.set(cv2.CAP_PROP_POS_FRAMES, frame)
                self._pos = frame
            else:   # backwards without seeking: start again
                self._cap.release()
                self._cap = None
                return self._read_frame(frame, seek)
        ok, bgr = self._cap.read()
        if not ok:
            self._cap.release()
            self._cap = None
            raise DatasetError(f"{self.video}: cannot read frame {frame}", "unreadable frame")
        self._pos = frame + 1
        return bgr

    def load(self, index: int, seek: bool = True) -> Sample:
        """Sample ``index`` (video frame ``frame_index[index]``); ``seek=False`` reads through
        the video instead of seeking."""
        frame = int(self.frame_index[index])
        bgr = self._read_frame(frame, seek)
        h, w = bgr.shape[:2]
        kp = self._keypoints[frame][None] if self._people[frame] else np.zeros((0, 33, 3), np.float32)
        if self._convert:
            kp = convert_keypoints(kp, self.source_layout, self.layout)
        masks = np.zeros((self.layout.num_masks, h, w), np.uint8)
        meta = {"video_id": self.video.stem, "frame_id": frame, "mask_labelled": [False] * self.layout.num_masks}
        return Sample(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), kp.copy(), masks, frame + 1, f"frame_{frame:04d}", meta)

    def iter_frames(self, indices: "Sequence[int] | None" = None) -> Iterator[tuple[int, "Sample | DatasetError"]]:
        """``(index, sample)`` for ``indices`` (default: all, in order), reading the video
        sequentially from its start, never seeking; a frame that cannot be read gives its
        :class:`DatasetError` in place of the sample."""
        if self._cap is not None:
            self._cap.release()
        self._cap = None
        for i in sorted(range(len(self)) if indices is None else indices):
            try:
                yield i, self.load(i, seek=False)
            except DatasetError as err:
                yield i, err

    def __getstate__(self):  # VideoCapture does not pickle (DataLoader workers)
        d = dict(self.__dict__)
        d["_cap"] = None
        d["_pos"] = 0
        return d


def open_dataset(path: "str | Path", layout: "str | Path | KeypointLayout | None" = None,
                 on_error: ErrorPolicy = "raise", image_dir: "str | Path | None" = None, *,
                 out_of_frame: OutOfFramePolicy = "unlabel", allow_empty: bool = False,
                 check_files: bool = True) -> KeypointSource:
    """Open a keypoint dataset, recognising its format.

    ``path`` may be a COCO dataset folder (with ``annotations.json``), a COCO JSON file,
    an MPII JSON list, or a BlazePose per-frame JSON beside its video; or several of them,
    comma-separated, each with an optional ``:WEIGHT`` (``"real:4,rendered"``): they are read
    as one :class:`~posesynth.datasets.multi.MultiSource` (one layout for all; see
    :func:`~posesynth.datasets.multi.split_sources`).  A path that exists as it is is always
    one dataset, whatever characters it holds.

    Args:
        layout: the layout samples come in (see :class:`CocoKeypointDataset`); MPII and
            BlazePose data default to ``coco17``.
        on_error: ``"raise"`` stops at the first problem; ``"skip"`` drops what is bad, counts
            it by kind and says so.
        image_dir: the folder of the images (COCO, MPII).
        out_of_frame: ``"unlabel"``, ``"clip"``, ``"skip-person"`` or ``"skip-image"`` for
            labelled keypoints outside their image.
        allow_empty: when False (the default), no usable sample raises one
            :class:`DatasetError` with the problem counts, before the caller writes anything.
    """
    check_policies(on_error, out_of_frame)
    from .multi import MultiSource, split_sources

    parts = split_sources(path)
    if parts is not None:
        srcs = [open_dataset(p, layout, on_error, image_dir, out_of_frame=out_of_frame, allow_empty=allow_empty,
                             check_files=check_files) for p, _ in parts]
        return MultiSource(srcs, [w for _, w in parts], [p for p, _ in parts], on_error=on_error,
                           allow_empty=allow_empty)
    p = Path(path)
    kw = dict(on_error=on_error, out_of_frame=out_of_frame, allow_empty=allow_empty)
    if p.is_dir():
        if not (p / "annotations.json").exists():
            raise DatasetError(f"{p}: not a dataset folder (no annotations.json inside)", "missing file")
        return CocoKeypointDataset(p, image_dir=image_dir, layout=layout, check_files=check_files, **kw)
    if not p.exists():
        raise DatasetError(f"{p}: no such file or folder", "missing file")
    if p.suffix.lower() != ".json":
        raise DatasetError(f"{p}: expected a dataset folder or a .json annotation file", "unknown format")
    try:
        with open(p, "rb") as fh:
            head = fh.read(4096).lstrip()
    except OSError as e:
        raise DatasetError(f"{p}: cannot read ({e.strerror})", "unreadable file") from None
    if head.startswith(b"{"):
        return CocoKeypointDataset(p, image_dir=image_dir, layout=layout, check_files=check_files, **kw)
    data = _read_json(p)
    if isinstance(data, list) and not data:
        raise DatasetError(f"{p}: no usable samples (the file is an empty list)", "empty dataset")
    if isinstance(data, list) and isinstance(data[0], dict) and "joints" in data[0]:
        return MpiiDataset(p, image_dir=image_dir, layout=layout or COCO17, check_files=check_files, **kw)
    if isinstance(data, list) and isinstance(data[0], list) and len(data[0]) == 33:
        return BlazePoseVideoDataset(p, layout=layout or COCO17, **kw)
    raise DatasetError(f"{p}: unrecognised keypoint format (expected COCO, MPII or BlazePose-33 JSON)",
                       "unknown format")


@dataclass
class DataOptions:
    """How a command reads every dataset it is given: the one set of reading options, embedded
    (as ``data_options``) in every config that reads data, and one group of command-line
    options (``--image-dir``, ``--on-error``, ``--out-of-frame``)."""

    image_dir: str = field(default="", metadata={
        "help": "folder the images' file_name values are relative to (default: DIR/images, DIR, then their "
                "parent, DIR being the dataset or JSON folder)"})
    on_error: str = field(default="skip", metadata={
        "help": "a bad image or annotation: skip (dropped, counted, named in a warning) or raise (stop with one "
                "line naming it, exit status 2)"})
    out_of_frame: str = field(default="unlabel", metadata={
        "help": "labelled keypoints more than 1 px outside their image: unlabel (v=0), clip, skip-person or "
                "skip-image; counted and said once"})

    def validate(self) -> None:
        check_policies(self.on_error, self.out_of_frame)

    def open_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :func:`open_dataset` these options give."""
        return {"on_error": self.on_error, "image_dir": self.image_dir or None, "out_of_frame": self.out_of_frame}


def data_options(cfg: Any) -> dict[str, Any]:
    """The :func:`open_dataset` options of a command's config (its :class:`DataOptions`,
    ``cfg.data_options``), for every dataset the command reads."""
    opts = getattr(cfg, "data_options", None)
    return (opts if isinstance(opts, DataOptions) else DataOptions()).open_kwargs()


def recorded_frame_rate(source: Any) -> "tuple[float | None, str]":
    """Frames per second of a source's samples played in order, and where that was read.

    A COCO file's ``"videos"`` list (``extract`` and ``convert`` write it) gives each clip's
    ``fps`` and ``every`` (the step between the kept frames): the samples' rate is
    ``fps / every``, when all listed clips agree.  A BlazePose JSON beside its video gives the
    video's rate.  ``(None, "")`` when nothing says.
    """
    rates = set()
    for v in getattr(source, "videos", None) or []:
        fps, every = v.get("fps"), v.get("every", 1) or 1
        if isinstance(fps, (int, float)) and fps > 0 and isinstance(every, (int, float)) and every > 0:
            rates.add(round(float(fps) / float(every), 6))
    if len(rates) == 1:
        return rates.pop(), f"the 'videos' list of {getattr(source, 'ann_file', 'the dataset')}"
    fps = getattr(source, "fps", 0.0)
    if isinstance(fps, (int, float)) and fps > 0:
        return float(fps), str(getattr(source, "video", "the video"))
    return None, ""
