"""Several keypoint datasets read as one: ``--data A,B:2`` wherever a dataset is read.

:func:`split_sources` recognises the list: comma-separated dataset paths, each optionally
followed by ``:WEIGHT`` (a positive number, default 1).  A path that exists as it is (even one
holding a comma or a colon) is always a single dataset.  :func:`~posesynth.datasets.formats.open_dataset`
opens each part and returns a :class:`MultiSource`.

Weights: a part of ``n`` items with weight ``w`` contributes ``max(1, round(w * n))`` items to
the combined source: its items repeated (``w > 1``) or thinned (``w < 1``) evenly and
deterministically (item ``j`` of the part's share is the part's item ``floor(j * n / m)``).  So
``real:4,rendered`` lets 100 real images count as 400 beside 2,000 rendered ones.

All parts must have the same layout (keypoint names and masks); ``layout=`` (``--layout``)
converts every part to one.  Each sample records its part: ``meta["source_dataset"]`` (the
path as given) and ``meta["source_index"]`` (the part's position in the list).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import ConfigError, DatasetError
from .formats import source_annotations
from .layouts import KeypointLayout
from .reading import ErrorPolicy, ProblemLog, ReaderBase, check_policies
from .sample import Sample

__all__ = ["split_sources", "MultiSource", "source_annotations", "resolve_data_spec", "data_name"]

_WEIGHT = re.compile(r"^(?P<path>.+):(?P<weight>[^:/\\]+)$")


def split_sources(spec: "str | Path") -> "list[tuple[str, float]] | None":
    """``[(path, weight), ...]`` for a list of datasets (``"A,B:2"``), or None for one plain path.

    A ``spec`` that exists as a file or folder is one dataset, commas and colons included.
    Otherwise it is split at commas, and each part that does not exist as it is loses a
    trailing ``:WEIGHT``.  Raises :class:`~posesynth.errors.ConfigError` for an empty part or a
    weight that is not a positive number.
    """
    s = str(spec)
    if not s or Path(s).exists():
        return None
    if "," not in s and not _WEIGHT.match(s):
        return None
    out = []
    for item in s.split(","):
        item = item.strip()
        if not item:
            raise ConfigError(f"--data {s}: an empty dataset name in the comma-separated list")
        path, weight = item, 1.0
        m = _WEIGHT.match(item)
        if m and not Path(item).exists():
            try:
                weight = float(m.group("weight"))
            except ValueError:
                if "," not in s:      # "a:b" that is neither a path nor path:weight: let the reader say so
                    return None
                raise ConfigError(f"--data {s}: {item!r}: the weight after ':' must be a number") from None
            path = m.group("path")
        if not (math.isfinite(weight) and weight > 0):
            raise ConfigError(f"--data {s}: {item!r}: the weight must be a positive number, not {weight:g}")
        out.append((path, weight))
    return out


def resolve_data_spec(spec: "str | Path") -> str:
    """``spec`` with each dataset path made absolute (and weights kept), for recording settings."""
    parts = split_sources(spec)
    if parts is None:
        return str(Path(spec).resolve()) if str(spec) else ""
    return ",".join(str(Path(p).resolve()) + (f":{w:g}" if w != 1 else "") for p, w in parts)


def data_name(spec: "str | Path") -> str:
    """A short name for a dataset or a list of them, for file names: the folder's name (the
    JSON's stem, or its folder's name for ``annotations.json``); parts joined with ``+``."""
    parts = split_sources(spec)
    paths = [p for p, _ in parts] if parts is not None else [str(spec)]
    names = []
    for p in paths:
        q = Path(p)
        name = q.stem if q.suffix.lower() == ".json" and q.stem != "annotations" else (
            q.parent.name if q.suffix.lower() == ".json" else q.name)
        names.append(re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "data")
    return "+".join(names)


@dataclass
class MultiEntry:
    """One item of a :class:`MultiSource` without its image: ``keypoints`` ``(P, K, 3)`` in the
    combined layout, the part's COCO image entry (``{}`` for other formats) and ``ann_ids``,
    and ``source`` (the part's position)."""

    keypoints: np.ndarray
    image: dict[str, Any] = field(default_factory=dict)
    ann_ids: list = field(default_factory=list)
    source: int = 0


class MultiSource(ReaderBase):
    """Several keypoint sources of one layout as one, each with a weight.

    Args:
        sources: the parts (anything with ``layout``, ``__len__`` and ``load``/``__getitem__``).
        weights: per part, the share it gets (default 1 each): a part of ``n`` items
            contributes ``max(1, round(w * n))`` items (none when it is empty).
        names: per part, for messages and provenance (default ``source0``, ...).
        on_error: as for the readers; under ``"skip"`` an item that fails to read is counted and
            replaced by the next readable one.
        allow_empty: when False, no item at all raises one :class:`DatasetError`.

    Attributes:
        layout: the parts' layout.  ``parts``, ``weights``, ``names``: as given.
        errors, notes, skipped, problem_counts(): the parts' problems and notes (each naming
            its file), then those found while reading.
    """

    def __init__(self, sources: Sequence[Any], weights: "Sequence[float] | None" = None,
                 names: "Sequence[str] | None" = None, on_error: ErrorPolicy = "raise",
                 allow_empty: bool = True) -> None:
        check_policies(on_error)
        if not sources:
            raise ConfigError("a combined dataset needs at least one part")
        self.parts = list(sources)
        self.weights = [1.0] * len(self.parts) if weights is None else [float(w) for w in weights]
        self.names = [f"source{k}" for k in range(len(self.parts))] if names is None else [str(n) for n in names]
        if not (len(self.weights) == len(self.names) == len(self.parts)):
            raise ConfigError("give one weight and one name per part")
        for n, w in zip(self.names, self.weights):
            if not (math.isfinite(w) and w > 0):
                raise ConfigError(f"{n}: the weight must be a positive number, not {w:g}")
        self.layout: KeypointLayout = self.parts[0].layout
        for name, part in zip(self.names[1:], self.parts[1:]):
            lay = part.layout
            if tuple(lay.keypoints) != tuple(self.layout.keypoints) or tuple(lay.masks) != tuple(self.layout.masks):
                raise DatasetError(
                    f"{name}: layout '{lay.name}' ({lay.num_keypoints} keypoints, masks {list(lay.masks)}) differs "
                    f"from {self.names[0]}'s '{self.layout.name}' ({self.layout.num_keypoints} keypoints, masks "
                    f"{list(self.layout.masks)}); datasets read together need one layout: give --layout "
                    f"{min((lay, self.layout), key=lambda x: x.num_keypoints).name} (or another that both convert "
                    "to) to convert them", "layout mismatch")
        self.on_error = on_error
        self.problems = ProblemLog(",".join(self.names), on_error)
        for part in self.parts:   # said already by each part: copied, not logged again
            pl = getattr(part, "problems", None)
            if pl is not None:
                self.problems.errors.extend(pl.errors)
                self.problems.kinds.extend(pl.kinds)
                self.problems.notes.extend(n for n in pl.notes if n not in self.problems.notes)
        self._failed_at_runtime: set[int] = set()
        sizes = [len(p) for p in self.parts]
        self.counts = [0 if n == 0 else max(1, int(round(w * n))) for n, w in zip(sizes, self.weights)]
        self._part = np.repeat(np.arange(len(self.parts)), self.counts)
        self._local = np.concatenate([(np.arange(m, dtype=np.int64) * n) // max(m, 1)
                                      for n, m in zip(sizes, self.counts)]) if self.parts else np.zeros(0, np.int64)
        self._annotations: "list[list[np.ndarray]] | None" = None
        if not len(self._part) and not allow_empty:
            raise DatasetError(f"{self.problems.source}: no usable samples in any of the datasets", "empty dataset")

    # ---- the index -----------------------------------------------------------------------
    def __len__(self) -> int:
        return int(len(self._part))

    def source_of(self, index: int) -> tuple[int, int]:
        """``(part, index within the part)`` of item ``index``."""
        return int(self._part[index]), int(self._local[index])

    @property
    def num_listed(self) -> int:
        return sum(int(getattr(p, "num_listed", len(p))) for p in self.parts)

    def describe(self) -> str:
        """``"A (100 images x 4 = 400), B (2000)"``: each part's items and share."""
        return ", ".join(f"{n} ({len(p)}" + (f" x {w:g} = {m}" if m != len(p) else "") + ")"
                         for n, p, w, m in zip(self.names, self.parts, self.weights, self.counts))

    # ---- reading -------------------------------------------------------------------------
    def load(self, index: int) -> Sample:
        k, i = self.source_of(index)
        s = self.parts[k].load(i)
        s.meta["source_dataset"] = self.names[k]
        s.meta["source_index"] = k
        return s

    def image_path(self, index: int) -> Path:
        """The image file of item ``index`` (parts that read image files)."""
        k, i = self.source_of(index)
        part = self.parts[k]
        if not hasattr(part, "image_path"):
            raise AttributeError(f"{self.names[k]} has no image files (video frames)")
        return part.image_path(i)

    def _part_annotations(self, k: int) -> list[np.ndarray]:
        if self._annotations is None:
            self._annotations = [None] * len(self.parts)   # type: ignore[list-item]
        if self._annotations[k] is None:
            self._annotations[k] = source_annotations(self.parts[k])
        return self._annotations[k]

    def annotations(self) -> list[np.ndarray]:
        """Every item's ``(P, K, 3)`` float32 keypoints in :attr:`layout` (pixels), in item order,
        without decoding images where the parts keep their annotations (see
        :func:`source_annotations`)."""
        return [self._part_annotations(k)[i].copy() for k, i in zip(self._part.tolist(), self._local.tolist())]

    @property
    def entries(self) -> list[MultiEntry]:
        """One :class:`MultiEntry` per item (keypoints in :attr:`layout`): what consumers read
        without decoding images (people per image, arm-angle histograms, frame ids)."""
        out = []
        for k, i in zip(self._part.tolist(), self._local.tolist()):
            part_entries = getattr(self.parts[k], "entries", None)
            e = part_entries[i] if part_entries is not None else None
            out.append(MultiEntry(self._part_annotations(k)[i], dict(getattr(e, "image", {}) or {}),
                                  list(getattr(e, "ann_ids", []) or []), k))
        return out
