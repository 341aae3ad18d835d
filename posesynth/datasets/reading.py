"""What every dataset reader shares: the error policy and problem log, image lookup and
reading (with truncation checks), and the out-of-frame policy for labelled keypoints.

Error policy (``on_error``):

- ``"raise"``: the first problem raises a :class:`~posesynth.errors.DatasetError` naming the
  file and the problem.
- ``"skip"``: the image (or annotation) with the problem is dropped; each problem is counted by
  kind, the first :data:`MAX_LISTED` are logged one line each, and one summary line follows.

Out-of-frame policy (``out_of_frame``) for a labelled keypoint more than :data:`COORD_TOLERANCE`
pixels outside its image: ``"unlabel"`` (``v = 0``, the default), ``"clip"`` (moved to the
nearest pixel of the image), ``"skip-person"`` (that person is dropped) or ``"skip-image"``
(the image is dropped).  Nothing is dropped silently: the counts are reported once per dataset.
"""
from __future__ import annotations

import io
import logging
import os
from collections import Counter
from pathlib import Path, PurePosixPath
from typing import Literal, Sequence

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import ConfigError, DatasetError

__all__ = ["ErrorPolicy", "OutOfFramePolicy", "ON_ERROR_CHOICES", "OUT_OF_FRAME_CHOICES", "COORD_TOLERANCE",
           "MAX_LISTED", "InfoNote", "ProblemLog", "ImageResolver", "image_size", "read_image", "is_truncated",
           "out_of_frame_points", "apply_out_of_frame", "OutOfFrameStats", "check_policies", "ReaderBase", "sizes_of",
           "size_problem"]

log = logging.getLogger("posesynth.datasets")

ErrorPolicy = Literal["raise", "skip"]
OutOfFramePolicy = Literal["unlabel", "clip", "skip-person", "skip-image"]
ON_ERROR_CHOICES = ("skip", "raise")
OUT_OF_FRAME_CHOICES = ("unlabel", "clip", "skip-person", "skip-image")
COORD_TOLERANCE = 1.0  # labelled keypoints may lie this many pixels outside the image as they are
MAX_LISTED = 20        # problems logged one by one (under "skip"); the rest are counted


def check_policies(on_error: str, out_of_frame: str = "unlabel") -> None:
    """Raise :class:`ConfigError` for an unknown policy name."""
    if on_error not in ON_ERROR_CHOICES:
        raise ConfigError(f"on_error must be one of {', '.join(ON_ERROR_CHOICES)}, not {on_error!r}")
    if out_of_frame not in OUT_OF_FRAME_CHOICES:
        raise ConfigError(f"out_of_frame must be one of {', '.join(OUT_OF_FRAME_CHOICES)}, not {out_of_frame!r}")


class InfoNote(str):
    """A note that is information rather than a warning (logged at INFO level)."""


class ProblemLog:
    """Problems of one dataset under an error policy; notes said once.

    Attributes:
        errors: one message per problem (each names the file and the problem).
        kinds: the kind of each problem, parallel to ``errors``.
        notes: things said once about the data (inferred layout, out-of-frame counts, ...).
    """

    def __init__(self, source: str, on_error: ErrorPolicy = "raise") -> None:
        check_policies(on_error)
        self.source = source
        self.on_error = on_error
        self.errors: list[str] = []
        self.kinds: list[str] = []
        self.notes: list[str] = []

    def fail(self, message: str, kind: str) -> None:
        """Report a problem: raise under ``"raise"``, else record (and log the first few)."""
        if self.on_error == "raise":
            raise DatasetError(message, kind)
        self.record(message, kind)

    def record(self, message: str, kind: str) -> None:
        self.errors.append(message)
        self.kinds.append(kind)
        n = len(self.errors)
        if n <= MAX_LISTED:
            log.warning("skipping: %s", message)
        if n == MAX_LISTED:
            log.warning("%s: further problems are counted, not listed (`posesynth check` lists them all)",
                        self.source)

    def note(self, message: str) -> None:
        """Say ``message`` once (at INFO level for an :class:`InfoNote`, else WARNING)."""
        if message not in self.notes:
            self.notes.append(str(message))
            log.log(logging.INFO if isinstance(message, InfoNote) else logging.WARNING, "%s", message)

    def counts(self) -> dict[str, int]:
        """Problems by kind, most frequent first."""
        return dict(Counter(self.kinds).most_common())

    def summary(self) -> str:
        """``"5 problems (3 missing image, 2 truncated image)"`` or ``"no problems"``."""
        if not self.errors:
            return "no problems"
        kinds = ", ".join(f"{n} {k}" for k, n in self.counts().items())
        return f"{len(self.errors)} problem{'s' if len(self.errors) != 1 else ''} ({kinds})"

    def finish(self) -> None:
        """One summary line after loading when problems were skipped."""
        if self.errors:
            log.warning("%s: %s skipped (on_error=skip)", self.source, self.summary())


# ---- finding images -------------------------------------------------------------------------
def _join_candidates(base: Path, name: PurePosixPath) -> list[Path]:
    """``base/name`` without repeating folders ``name`` starts with that ``base`` ends with
    (``images/`` + ``images/a.jpg`` -> ``images/a.jpg``), then the plain join."""
    out = []
    parts = name.parts
    for n in range(min(len(parts) - 1, len(base.parts)), 0, -1):
        if base.parts[-n:] == parts[:n]:
            out.append(base.joinpath(*parts[n:]))
            break
    out.append(base.joinpath(*parts))
    return out


MAX_INDEXED = 1_000_000   # files indexed by name for the lookup by file name (a larger tree is cut there)


class ImageResolver:
    """Finds the file of an image entry's ``file_name``.

    Order: an absolute ``file_name`` as it is; with ``image_dir``, only ``image_dir/file_name``
    (a leading folder that ``image_dir`` already ends with is not repeated); without it,
    ``R/images/file_name``, ``R/file_name``, ``R/../images/file_name`` and ``R/../file_name``,
    where ``R`` is the dataset folder or the JSON file's folder.  The base that worked last is
    tried first.

    When none of these exists, the file is looked up by its bare name (the last part of
    ``file_name``) under ``image_dir``, or under ``R`` and ``R/../images``, recursively: images
    in per-subject or per-clip subfolders whose entries name only the file (Human3.6M's COCO
    export) are found.  A name is used only when exactly one file has it (or, among several,
    exactly one whose path ends with the whole ``file_name``); otherwise the image is not found
    and :meth:`not_found` names the candidates.  The tree is indexed once, on the first miss.
    """

    def __init__(self, root: Path, image_dir: "str | Path | None" = None) -> None:
        self.explicit = image_dir is not None
        root = Path(root)
        if image_dir is not None:
            self.bases = [Path(image_dir)]
            self.search_roots = [Path(image_dir)]
        else:
            cands = [root / "images", root, root.parent / "images", root.parent]
            seen: list[Path] = []
            for c in cands:
                if c not in seen and (c == root or c.is_dir()):
                    seen.append(c)
            self.bases = seen
            self.search_roots = [root] + ([root.parent / "images"] if (root.parent / "images").is_dir()
                                          and root.parent / "images" != root else [])
        self._last = 0
        self._by_name: "dict[str, list[Path]] | None" = None
        self._ambiguous: dict[str, list[Path]] = {}
        self.found_by_name = 0

    @property
    def default_dir(self) -> Path:
        """The folder images are read from (the first that worked, else the first tried)."""
        return self.bases[self._last]

    def candidates(self, file_name: str) -> list[Path]:
        name = PurePosixPath(str(file_name).replace("\\", "/"))
        if name.is_absolute():
            return [Path(str(name))]
        order = [self._last] + [i for i in range(len(self.bases)) if i != self._last]
        out: list[Path] = []
        for i in order:
            for c in _join_candidates(self.bases[i], name):
                if c not in out:
                    out.append(c)
        return out

    def resolve(self, file_name: str) -> "Path | None":
        """The existing file for ``file_name``, or None."""
        name = PurePosixPath(str(file_name).replace("\\", "/"))
        if name.is_absolute():
            p = Path(str(name))
            return p if p.is_file() else self.by_name(file_name)
        order = [self._last] + [i for i in range(len(self.bases)) if i != self._last]
        for i in order:
            for c in _join_candidates(self.bases[i], name):
                if c.is_file():
                    self._last = i
                    return c
        return self.by_name(file_name)

    def _index(self) -> "dict[str, list[Path]]":
        """Every file under :attr:`search_roots` by its name (hidden folders skipped), built once."""
        if self._by_name is None:
            index: dict[str, list[Path]] = {}
            n = 0
            seen: set[str] = set()
            for top in self.search_roots:
                for dirpath, dirnames, filenames in os.walk(top):
                    if dirpath in seen:
                        dirnames[:] = []
                        continue
                    seen.add(dirpath)
                    dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                    for f in filenames:
                        index.setdefault(f, []).append(Path(dirpath) / f)
                    n += len(filenames)
                    if n >= MAX_INDEXED:
                        log.warning("%s: more than %d files; the lookup of images by file name indexed only the "
                                    "first ones (give the image folder with --image-dir)", top, MAX_INDEXED)
                        break
            self._by_name = index
        return self._by_name

    def by_name(self, file_name: str) -> "Path | None":
        """The one file under :attr:`search_roots` named like ``file_name`` (its last part), or
        None when there is none or several (then :meth:`not_found` lists them)."""
        name = PurePosixPath(str(file_name).replace("\\", "/"))
        if not name.name:
            return None
        hits = self._index().get(name.name, [])
        if len(hits) > 1 and len(name.parts) > 1:
            tail = [h for h in hits if h.parts[-len(name.parts):] == name.parts]
            hits = tail if len(tail) == 1 else hits
        if len(hits) == 1:
            if self.found_by_name == 0:
                log.info("%s: found by file name under %s (not at the path its entry gives); images are looked up "
                         "by name there", hits[0], ", ".join(str(r) for r in self.search_roots))
            self.found_by_name += 1
            return hits[0]
        if len(hits) > 1:
            self._ambiguous[str(file_name)] = sorted(hits)
        return None

    def not_found(self, file_name: str) -> str:
        """The message for a ``file_name`` found nowhere: the path tried first, and where else
        (or, when several files have its name, those files)."""
        first = self.candidates(file_name)[0]
        roots = ", ".join(str(r) for r in self.search_roots)
        amb = self._ambiguous.get(str(file_name))
        if amb:
            shown = ", ".join(str(p) for p in amb[:4]) + (f" and {len(amb) - 4} more" if len(amb) > 4 else "")
            return (f"{first}: image file not found there, and {len(amb)} files named "
                    f"'{PurePosixPath(str(file_name).replace(chr(92), '/')).name}' under {roots} make the name "
                    f"ambiguous ({shown}); give the image folder with --image-dir")
        if self.explicit:
            return f"{first}: image file not found (in --image-dir {self.bases[0]}, nor by name below it)"
        others = ", ".join(str(b) for b in self.bases if b != first.parent)
        also = f"; also looked in {others}" if others else ""
        return (f"{first}: image file not found{also}, nor by name under {roots}; give the image folder with "
                "--image-dir")


# ---- reading images ---------------------------------------------------------------------------
_JPEG_SOI, _JPEG_EOI = b"\xff\xd8", b"\xff\xd9"
_PNG_SIG, _PNG_IEND = b"\x89PNG\r\n\x1a\n", b"IEND"
_TAIL = 1024


def _tail_ok(head: bytes, tail: bytes) -> "bool | None":
    """True/False where the format's end marker says so (JPEG, PNG); None for other formats."""
    if head.startswith(_JPEG_SOI):
        return _JPEG_EOI in tail
    if head.startswith(_PNG_SIG):
        return _PNG_IEND in tail
    return None


def _pil_truncated(data: "bytes | Path") -> bool:
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as im:
            im.load()
    except OSError as e:  # PIL: "image file is truncated (N bytes not processed)" and friends
        return "truncated" in str(e) or "broken data stream" in str(e)
    return False


def is_truncated(path: Path) -> bool:
    """Whether a JPEG or PNG file is cut short.  Reads the first and last kilobyte; a file
    without its end marker there (e.g. data appended after it) is decoded by PIL to decide."""
    with open(path, "rb") as f:
        head = f.read(8)
        f.seek(0, 2)
        size = f.tell()
        f.seek(max(size - _TAIL, 0))
        tail = f.read()
    ok = _tail_ok(head, tail)
    return False if ok is None or ok else _pil_truncated(path)


def image_size(path: Path, what: str = "image") -> tuple[int, int]:
    """``(width, height)`` from the file's header, after a truncation check.

    Raises :class:`DatasetError` with kind ``"missing <what>"``, ``"unreadable <what>"`` or
    ``"truncated <what>"``; the message starts with the path.
    """
    try:
        with Image.open(path) as pil:
            size = pil.size
        truncated = is_truncated(path)
    except FileNotFoundError:
        raise DatasetError(f"{path}: {what} file not found", f"missing {what}") from None
    except (UnidentifiedImageError, OSError) as err:
        raise DatasetError(f"{path}: {what} is unreadable ({err.__class__.__name__})", f"unreadable {what}") from None
    if truncated:
        raise DatasetError(f"{path}: {what} file is truncated (cut short)", f"truncated {what}")
    return size


def read_image(path: Path, flags: int = cv2.IMREAD_COLOR) -> np.ndarray:
    """Decode an image file: ``(H, W, 3)`` uint8 RGB (or ``(H, W)`` with ``cv2.IMREAD_GRAYSCALE``).

    Pixels are in the file's stored orientation (EXIF rotation is ignored, as annotations
    refer to the stored pixels).  A JPEG or PNG cut short raises a :class:`DatasetError` of
    kind ``"truncated image"`` instead of decoding to grey.
    """
    try:
        buf = np.fromfile(str(path), np.uint8)
    except FileNotFoundError:
        raise DatasetError(f"{path}: image file not found", "missing image") from None
    except OSError as e:
        raise DatasetError(f"{path}: cannot read image ({e.strerror})", "unreadable image") from None
    data = buf.tobytes()
    ok = _tail_ok(data[:8], data[-_TAIL:])
    if ok is False and _pil_truncated(data):
        raise DatasetError(f"{path}: image file is truncated (cut short)", "truncated image")
    img = cv2.imdecode(buf, flags | cv2.IMREAD_IGNORE_ORIENTATION) if buf.size else None
    if img is None:
        try:
            with Image.open(io.BytesIO(data)) as pil:
                img = np.asarray(pil.convert("L" if flags == cv2.IMREAD_GRAYSCALE else "RGB"))
            return img
        except (UnidentifiedImageError, OSError):
            raise DatasetError(f"{path}: cannot read image (not an image, or corrupt)", "unreadable image") from None
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    return img


# ---- out-of-frame keypoints ----------------------------------------------------------------------
def out_of_frame_points(kp: np.ndarray, width: float, height: float, tol: float = COORD_TOLERANCE) -> np.ndarray:
    """``(P, K)`` bool: labelled keypoints more than ``tol`` pixels outside a ``width x height`` image
    (pixel centres at integer coordinates, so the image spans ``[-0.5, width - 0.5]``)."""
    x, y, v = kp[..., 0], kp[..., 1], kp[..., 2]
    return (v > 0) & ((x < -tol) | (y < -tol) | (x > width - 1 + tol) | (y > height - 1 + tol))


def apply_out_of_frame(kp: np.ndarray, width: float, height: float, policy: OutOfFramePolicy,
                       tol: float = COORD_TOLERANCE) -> tuple[np.ndarray, np.ndarray, int, bool]:
    """Apply the out-of-frame policy to one image's ``(P, K, 3)`` keypoints.

    Returns ``(keypoints, keep, n_points, drop_image)``: the new keypoints (only the people
    kept), the ``(P,)`` bool of people kept, the number of out-of-frame points, and whether the
    policy drops the image.  The input is not modified.
    """
    out = out_of_frame_points(kp, width, height, tol)
    n = int(out.sum())
    keep = np.ones(kp.shape[0], bool)
    if n == 0:
        return kp, keep, 0, False
    if policy == "skip-image":
        return kp, keep, n, True
    if policy == "skip-person":
        keep = ~out.any(axis=1)
        return kp[keep], keep, n, False
    kp = kp.copy()
    if policy == "clip":
        kp[..., 0] = np.where(out, np.clip(kp[..., 0], 0, width - 1), kp[..., 0])
        kp[..., 1] = np.where(out, np.clip(kp[..., 1], 0, height - 1), kp[..., 1])
    else:  # unlabel
        kp[out] = 0.0
    return kp, keep, n, False


def _n(n: int, one: str, many: "str | None" = None) -> str:
    return f"{n} {one if n == 1 else (many or one + 's')}"


class OutOfFrameStats:
    """Counts of out-of-frame keypoints for one dataset, reported once."""

    def __init__(self, policy: OutOfFramePolicy) -> None:
        check_policies("skip", policy)
        self.policy = policy
        self.points = self.people = self.images = 0

    def add(self, kp: np.ndarray, width: float, height: float) -> tuple[np.ndarray, np.ndarray, bool]:
        """Apply the policy to one image and count; returns ``(keypoints, keep, drop_image)``."""
        out = out_of_frame_points(kp, width, height)
        new, keep, n, drop = apply_out_of_frame(kp, width, height, self.policy)
        if n:
            self.points += n
            self.people += int(out.any(axis=1).sum())
            self.images += 1
        return new, keep, drop

    def message(self, source: str) -> "str | None":
        if not self.points:
            return None
        what = {"unlabel": "unlabelled (v=0)", "clip": "moved to the nearest pixel of the image",
                "skip-person": f"dropped {'that person' if self.people == 1 else 'those people'}",
                "skip-image": f"dropped {'that image' if self.images == 1 else 'those images'}"}[self.policy]
        return (f"{source}: {_n(self.points, 'labelled keypoint')} of {_n(self.people, 'person', 'people')} in "
                f"{_n(self.images, 'image')} {'lies' if self.points == 1 else 'lie'} more than {COORD_TOLERANCE:g} px "
                f"outside the image: {what} (--out-of-frame {self.policy}; choices: {', '.join(OUT_OF_FRAME_CHOICES)})")


def size_problem(im: dict) -> "str | None":
    """What is wrong with an image entry's stated ``width``/``height`` (None when each is absent
    or a positive whole number of pixels): ``"sixty-four"``, ``-64`` or ``64.5`` are refused
    rather than ignored."""
    for key in ("width", "height"):
        v = im.get(key)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (v > 0 and float(v).is_integer()):
            return f"'{key}' must be a positive whole number of pixels, not {v!r}"
    return None


def sizes_of(entries: Sequence[dict]) -> list["tuple[int, int] | None"]:
    """``(width, height)`` stated by COCO image entries where both are positive integers."""
    out = []
    for im in entries:
        w, h = im.get("width"), im.get("height")
        ok = isinstance(w, (int, float)) and isinstance(h, (int, float)) and w > 0 and h > 0
        out.append((int(w), int(h)) if ok else None)
    return out


class ReaderBase:
    """What the dataset readers share: problem counts, notes, and ``__getitem__`` under the
    error policy.  Subclasses set ``self.problems`` (a :class:`ProblemLog`), ``self.on_error``
    and ``self._failed_at_runtime = set()``, and define ``load(index)`` and ``__len__``."""

    problems: ProblemLog
    on_error: ErrorPolicy
    _failed_at_runtime: set

    @property
    def errors(self) -> list[str]:
        """One message per problem found (images or annotations dropped, or failed reads)."""
        return self.problems.errors

    @property
    def notes(self) -> list[str]:
        """What was said once about the data (inferred layout, out-of-frame counts, ...)."""
        return self.problems.notes

    @property
    def skipped(self) -> int:
        """Number of problems skipped (``on_error="skip"``): each dropped an image or an annotation."""
        return len(self.problems.errors)

    def problem_counts(self) -> dict[str, int]:
        """Problems by kind (e.g. ``{"missing image": 3}``)."""
        return self.problems.counts()

    def load(self, index: int):  # pragma: no cover - defined by subclasses
        raise NotImplementedError

    def annotations(self) -> "list[np.ndarray]":  # pragma: no cover - defined by subclasses
        """Every sample's people ``(P, K, 3)`` float32 in the reader's layout (``self.layout``),
        as :meth:`load` gives them, read from the annotations alone (no image is decoded)."""
        raise NotImplementedError

    def __len__(self) -> int:  # pragma: no cover - defined by subclasses
        raise NotImplementedError

    def __getitem__(self, index: int):
        """Like ``load``; under ``on_error="skip"`` a sample that fails to read is counted and
        replaced by the next readable one, so an epoch never dies on one file."""
        if self.on_error == "raise":
            return self.load(index)
        n = len(self)
        for step in range(n):
            i = (index + step) % n
            if i in self._failed_at_runtime:
                continue
            try:
                return self.load(i)
            except DatasetError as err:
                self._failed_at_runtime.add(i)
                self.problems.record(str(err), err.kind)
        raise DatasetError(f"{self.problems.source}: no readable sample left ({self.problems.summary()})",
                           "empty dataset")

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]
