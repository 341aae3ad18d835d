"""Video files: sequential frame reading and a verified MP4 writer (OpenCV).

Reading never seeks: frames are decoded in order (``grab`` for the frames that ``every``
skips, ``grab`` + ``retrieve`` for the ones returned), because seeking in compressed video
lands on key frames and silently returns the wrong frame in many containers.

Writing uses H.264 where an encoder is available: OpenCV's own (``avc1``; the pip wheels'
FFmpeg has none), else the FFmpeg binary bundled with the optional ``imageio-ffmpeg`` package
(``pip install imageio-ffmpeg``, the ``h264`` extra: libx264, yuv420p, even frame sizes), else
the first codec this OpenCV build can write (``mp4v``, MPEG-4 Part 2, which browsers do not
play); the fallback is said once.  An encoder counts as usable only when a short probe file
written with it reads back with the right frame count and size.  Every video written is itself read back on :meth:`VideoWriter.close`
(frame count and size) and then moved into place atomically.

Frames are RGB ``uint8`` ``(H, W, 3)`` everywhere in this module (OpenCV's BGR stays inside).
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from ..errors import PosesynthError
from ..io import ensure_writable_dir

__all__ = ["VideoError", "VideoInfo", "VIDEO_EXTS", "probe_video", "read_frames", "count_frames",
           "VideoWriter", "WrittenVideo", "writable_codec", "ffmpeg_h264", "choose_encoder", "H264_FOURCCS",
           "FALLBACK_FOURCCS"]

log = logging.getLogger(__name__)

VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
H264_FOURCCS = ("avc1", "H264", "X264")
FALLBACK_FOURCCS = ("mp4v", "XVID", "MJPG")


class VideoError(PosesynthError):
    """A video cannot be opened, decoded or written."""


@dataclass(frozen=True)
class VideoInfo:
    """What a video's container says about it.

    Attributes:
        path: the file.
        width, height: frame size in pixels.
        fps: frames per second (0 when the container does not say).
        frame_count: frames the container announces; can be approximate or 0 (use
            :func:`count_frames` for the exact number, which decodes the whole file).
    """

    path: Path
    width: int
    height: int
    fps: float
    frame_count: int

    @property
    def size(self) -> tuple[int, int]:
        """``(H, W)``."""
        return self.height, self.width


def _open(path: "str | Path") -> cv2.VideoCapture:
    p = Path(path)
    if not p.exists():
        raise VideoError(f"{p}: video file not found")
    if p.is_dir():
        raise VideoError(f"{p}: is a folder, expected a video file ({', '.join(VIDEO_EXTS)})")
    cap = cv2.VideoCapture(str(p))
    if not cap.isOpened():
        raise VideoError(f"{p}: cannot open as a video (not a video file, or a codec this OpenCV build lacks)")
    return cap


def probe_video(path: "str | Path") -> VideoInfo:
    """Size, frame rate and announced frame count of a video (decodes nothing)."""
    cap = _open(path)
    try:
        w = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        h = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    finally:
        cap.release()
    if w <= 0 or h <= 0:
        raise VideoError(f"{path}: the video has no readable frame size")
    return VideoInfo(Path(path), w, h, fps if np.isfinite(fps) and fps > 0 else 0.0, max(n, 0))


def read_frames(path: "str | Path", every: int = 1, start: int = 0, stop: "int | None" = None
                ) -> Iterator[tuple[int, np.ndarray]]:
    """Decode a video in order and yield ``(frame_index, rgb)`` for frames ``start, start +
    every, ...`` below ``stop`` (``None``: to the end).

    ``frame_index`` is 0-based in the file.  ``rgb`` is ``(H, W, 3)`` uint8.  Never seeks.
    """
    if every < 1:
        raise VideoError(f"every must be at least 1, not {every}")
    if start < 0:
        raise VideoError(f"start must be at least 0, not {start}")
    cap = _open(path)
    try:
        i = 0
        while stop is None or i < stop:
            keep = i >= start and (i - start) % every == 0
            if not cap.grab():
                break
            if keep:
                ok, bgr = cap.retrieve()
                if not ok or bgr is None:
                    raise VideoError(f"{path}: cannot decode frame {i}")
                yield i, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            i += 1
    finally:
        cap.release()


def count_frames(path: "str | Path") -> int:
    """The exact number of frames, by decoding (grabbing) them all in order."""
    cap = _open(path)
    n = 0
    try:
        while cap.grab():
            n += 1
    finally:
        cap.release()
    return n


@contextlib.contextmanager
def _quiet_stderr():
    """Silence the C-level stderr (FFmpeg prints errors while codecs are probed)."""
    try:
        fd = os.dup(2)
    except OSError:  # no stderr to silence
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(fd, 2)
    finally:
        os.close(fd)


def _try_write(path: Path, fourcc: str, fps: float, frames: "list[np.ndarray]") -> bool:
    h, w = frames[0].shape[:2]
    wr = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
    try:
        if not wr.isOpened():
            return False
        for f in frames:
            wr.write(f)
    finally:
        wr.release()
    return _read_back(path) == (len(frames), (h, w))


def _read_back(path: Path) -> "tuple[int, tuple[int, int] | None]":
    """(frames decoded, (H, W) of the first frame) of a written file; (0, None) if unreadable."""
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        return 0, None
    n, size = 0, None
    try:
        while True:
            ok, f = cap.read()
            if not ok:
                break
            if size is None:
                size = f.shape[:2]
            n += 1
    finally:
        cap.release()
    return n, size


@functools.lru_cache(maxsize=None)
def writable_codec(ext: str = ".mp4") -> str:
    """The FourCC this OpenCV build writes for ``ext`` files: H.264 (``avc1``) when it can,
    otherwise the first of :data:`FALLBACK_FOURCCS` whose probe file reads back correctly."""
    probe = [np.full((32, 48, 3), v, np.uint8) for v in (0, 120, 240)]
    with tempfile.TemporaryDirectory(prefix="posesynth-codec-") as tmp:
        for i, fourcc in enumerate(H264_FOURCCS + FALLBACK_FOURCCS):
            with _quiet_stderr():
                ok = _try_write(Path(tmp) / f"probe{i}{ext}", fourcc, 10.0, probe)
            if ok:
                return fourcc
    raise VideoError(f"this OpenCV build ({cv2.__version__}) cannot write {ext} video with any of "
                     f"{', '.join(H264_FOURCCS + FALLBACK_FOURCCS)}")


class _FfmpegWriter:
    """H.264 through imageio-ffmpeg's bundled FFmpeg (libx264, yuv420p, +faststart for browsers)."""

    def __init__(self, path: Path, size: tuple[int, int], fps: float) -> None:
        import imageio_ffmpeg

        h, w = size
        self._gen = imageio_ffmpeg.write_frames(str(path), (w, h), fps=fps, codec="libx264", pix_fmt_in="rgb24",
                                                pix_fmt_out="yuv420p", quality=7, macro_block_size=1,
                                                ffmpeg_log_level="error", output_params=["-movflags", "+faststart"])
        self._gen.send(None)

    def write(self, rgb: np.ndarray) -> None:
        self._gen.send(np.ascontiguousarray(rgb))

    def release(self) -> None:
        if self._gen is not None:
            self._gen.close()
            self._gen = None


@functools.lru_cache(maxsize=None)
def ffmpeg_h264(ext: str = ".mp4") -> bool:
    """Whether imageio-ffmpeg is installed and its FFmpeg writes H.264 ``ext`` files that read back."""
    try:
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        return False
    probe = [np.full((32, 48, 3), v, np.uint8) for v in (0, 120, 240)]
    with tempfile.TemporaryDirectory(prefix="posesynth-codec-") as tmp:
        path = Path(tmp) / f"probe{ext}"
        try:
            wr = _FfmpegWriter(path, (32, 48), 10.0)
            for f in probe:
                wr.write(f)
            wr.release()
        except Exception:   # a broken binary, a missing encoder: not usable
            return False
        return _read_back(path) == (3, (32, 48))


_SAID: set[str] = set()


@functools.lru_cache(maxsize=None)
def choose_encoder(ext: str = ".mp4") -> tuple[str, str]:
    """``(backend, fourcc)`` for ``ext`` files: ``("opencv", "avc1")`` where OpenCV writes H.264,
    else ``("ffmpeg", "avc1")`` with imageio-ffmpeg, else ``("opencv", FOURCC)`` of
    :func:`writable_codec` (the fallback, said once)."""
    fourcc = writable_codec(ext)
    if fourcc in H264_FOURCCS:
        return "opencv", fourcc
    if ext in (".mp4", ".m4v", ".mov", ".mkv") and ffmpeg_h264(ext):
        return "ffmpeg", "avc1"
    if ext not in _SAID:
        _SAID.add(ext)
        log.warning("no H.264 encoder here (OpenCV %s has none, imageio-ffmpeg is not installed): writing %s video as "
                    "'%s'%s; `pip install imageio-ffmpeg` (posesynth's h264 extra) gives H.264", cv2.__version__,
                    ext, fourcc, ", which browsers do not play" if fourcc == "mp4v" else "")
    return "opencv", fourcc


@dataclass(frozen=True)
class WrittenVideo:
    """A video written and verified: its path, FourCC, frame count, ``(H, W)`` and fps."""

    path: Path
    codec: str
    frames: int
    size: tuple[int, int]
    fps: float
    encoder: str = "opencv"     # or "ffmpeg" (imageio-ffmpeg's bundled FFmpeg)

    @property
    def is_h264(self) -> bool:
        return self.codec in H264_FOURCCS


class VideoWriter:
    """Write RGB frames to a video file, verified on :meth:`close`.

    Args:
        path: output file; ``.mp4`` (default container) or another extension OpenCV knows.
        fps: frames per second (> 0).
        codec: a FourCC (written by OpenCV), or ``"auto"`` (:func:`choose_encoder`: H.264 where
            an encoder is available, through OpenCV or imageio-ffmpeg; an odd frame size, which
            H.264 in yuv420p cannot hold, falls back to OpenCV's codec).

    The frame size is fixed by the first frame; every frame must have it.  Frames go to a
    temporary file beside ``path``; :meth:`close` reads it back, checks the frame count and
    size, and renames it to ``path`` (so ``path`` is never a half-written video).  Use as a
    context manager; on an exception the temporary file is removed.
    """

    def __init__(self, path: "str | Path", fps: float, codec: str = "auto") -> None:
        self.path = Path(path)
        if not (fps and fps > 0 and np.isfinite(fps)):
            raise VideoError(f"{self.path}: fps must be a positive number, not {fps}")
        self.fps = float(fps)
        ext = self.path.suffix.lower() or ".mp4"
        if not self.path.suffix:
            self.path = self.path.with_suffix(ext)
        self.backend, self.codec = choose_encoder(ext) if codec == "auto" else ("opencv", codec)
        ensure_writable_dir(self.path.parent, "video output folder")
        self._tmp = self.path.with_name(f".{self.path.stem}.partial{ext}")
        self._writer: "cv2.VideoWriter | _FfmpegWriter | None" = None
        self.size: "tuple[int, int] | None" = None
        self.frames = 0
        self.result: "WrittenVideo | None" = None

    def write(self, rgb: np.ndarray) -> None:
        """Append one ``(H, W, 3)`` uint8 RGB frame."""
        frame = np.asarray(rgb)
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise VideoError(f"{self.path}: a frame must be (H, W, 3) uint8 RGB, got {frame.shape} {frame.dtype}")
        if self._writer is None:
            self.size = frame.shape[:2]
            h, w = self.size
            if self.backend == "ffmpeg" and (h % 2 or w % 2):
                self.backend, self.codec = "opencv", writable_codec(self.path.suffix.lower())
                log.warning("%s: H.264 (yuv420p) needs an even frame size, not %dx%d: written as '%s'", self.path,
                            w, h, self.codec)
            if self.backend == "ffmpeg":
                self._writer = _FfmpegWriter(self._tmp, (h, w), self.fps)
            else:
                with _quiet_stderr():
                    self._writer = cv2.VideoWriter(str(self._tmp), cv2.VideoWriter_fourcc(*self.codec), self.fps,
                                                   (w, h))
                if not self._writer.isOpened():
                    raise VideoError(f"{self.path}: OpenCV cannot write {w}x{h} video with codec '{self.codec}'")
        elif frame.shape[:2] != self.size:
            raise VideoError(f"{self.path}: frame {self.frames} is {frame.shape[1]}x{frame.shape[0]}, the video is "
                             f"{self.size[1]}x{self.size[0]}")
        if self.backend == "ffmpeg":
            self._writer.write(frame)
        else:
            self._writer.write(cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2BGR))
        self.frames += 1

    def write_batch(self, frames: "np.ndarray | list[np.ndarray]") -> None:
        """Append ``(B, H, W, 3)`` uint8 RGB frames."""
        for f in frames:
            self.write(f)

    def close(self) -> WrittenVideo:
        """Finish the file, verify it (frame count and size) and move it into place."""
        if self.result is not None:
            return self.result
        if self._writer is None:
            raise VideoError(f"{self.path}: no frame was written")
        self._writer.release()
        n, size = _read_back(self._tmp)
        if n != self.frames or size != self.size:
            self._tmp.unlink(missing_ok=True)
            raise VideoError(f"{self.path}: the written video reads back as {n} frames of "
                             f"{'?' if size is None else f'{size[1]}x{size[0]}'}, expected {self.frames} of "
                             f"{self.size[1]}x{self.size[0]} (codec '{self.codec}')")
        os.replace(self._tmp, self.path)
        self.result = WrittenVideo(self.path, self.codec, n, tuple(size), self.fps, self.backend)
        return self.result

    def abort(self) -> None:
        """Drop the partial file."""
        if self._writer is not None:
            self._writer.release()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
