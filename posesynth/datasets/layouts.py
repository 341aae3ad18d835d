"""Keypoint layouts: names, limbs (PAF pairs), left/right flip pairs, OKS sigmas, mask names.

A layout fixes the channel order of every pose map: ``K`` heatmaps, then ``2 * L`` PAF
channels (x then y for each limb), then ``M`` masks.  The driver layout has
9 + 16 + 1 = 26 channels.

Built-in layouts: ``driver9``, ``coco17``, ``mpii16`` and ``blazepose33``.  Users define their own in YAML::

    name: hand5
    keypoints: [wrist, thumb, index, middle, ring]
    limbs: [[wrist, thumb], [wrist, index], [wrist, middle], [wrist, ring]]
    flip_pairs: []            # pairs of names (or indices) swapped by a horizontal flip
    sigmas: [0.05, 0.03, 0.03, 0.03, 0.03]   # OKS sigmas, one per keypoint
    masks: []                 # optional per-image masks, e.g. [seatbelt]
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import yaml

from ..errors import LayoutError

__all__ = ["KeypointLayout", "DRIVER9", "COCO17", "MPII16", "BLAZEPOSE33", "get_layout", "BUILTIN_LAYOUTS",
           "COCO_SIGMAS", "DEFAULT_SIGMA", "canonical_name", "split_side", "infer_flip_pairs", "infer_sigmas",
           "MPII16_NAMES", "BLAZEPOSE33_NAMES"]

DEFAULT_SIGMA = 0.079  # OKS sigma for a joint COCO has no value for (COCO's shoulder; CrowdPose's head and neck)
_SIDE_WORDS = {"left": "left", "l": "left", "right": "right", "r": "right"}


def split_side(name: str) -> tuple["str | None", str]:
    """``(side, rest)`` of a keypoint name, normalised: case, spaces, hyphens, underscores and
    camelCase do not matter, and the side may be a prefix or suffix word (``left``/``l``).

    ``"Left Shoulder"``, ``"left_shoulder"``, ``"l_shoulder"``, ``"LShoulder"`` and
    ``"shoulder_left"`` all give ``("left", "shoulder")``; ``"nose"`` gives ``(None, "nose")``.
    """
    s = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", str(name))
    s = re.sub(r"([A-Z])([A-Z][a-z])", r"\1 \2", s)
    toks = [t for t in re.split(r"[^0-9a-zA-Z]+", s.lower()) if t]
    side = None
    if len(toks) > 1 and toks[0] in _SIDE_WORDS:
        side = _SIDE_WORDS[toks.pop(0)]
    elif len(toks) > 1 and toks[-1] in _SIDE_WORDS:
        side = _SIDE_WORDS[toks.pop()]
    else:
        words = [t for t in toks if t in ("left", "right")]
        if len(words) == 1:
            side = words[0]
            toks.remove(side)
    return side, "_".join(toks)


def canonical_name(name: str) -> str:
    """The normalised form names are matched by: ``"Left Shoulder"`` -> ``"left_shoulder"``."""
    return "_".join(p for p in split_side(name) if p)


def infer_flip_pairs(names: Sequence[str]) -> tuple[list[tuple[int, int]], list[str]]:
    """Left/right pairs found by name, and the sided names left without a partner.

    Returns ``(pairs, unpaired)``: ``pairs`` holds index pairs ``(left, right)``.
    """
    parts = [split_side(n) for n in names]
    where = {p: i for i, p in enumerate(parts)}
    pairs, unpaired = [], []
    for i, (side, rest) in enumerate(parts):
        if side is None:
            continue
        j = where.get(("right" if side == "left" else "left", rest))
        if j is None:
            unpaired.append(str(names[i]))
        elif side == "left":
            pairs.append((i, j))
    return pairs, unpaired


def infer_sigmas(names: Sequence[str]) -> tuple[list[float], list[str]]:
    """OKS sigmas from COCO's per-joint values where the normalised names match.

    A ``neck`` gets the shoulders' value; any other joint gets :data:`DEFAULT_SIGMA`.
    Returns ``(sigmas, names_without_a_coco_value)``.
    """
    sig, missing = [], []
    for n in names:
        c = canonical_name(n)
        if c in COCO_SIGMAS:
            sig.append(COCO_SIGMAS[c])
        elif c == "neck":
            sig.append((COCO_SIGMAS["left_shoulder"] + COCO_SIGMAS["right_shoulder"]) / 2)
        else:
            sig.append(DEFAULT_SIGMA)
            missing.append(str(n))
    return sig, missing

# COCO's per-keypoint OKS sigmas (Ronchi & Perona), in the order of COCO17 below.
COCO_SIGMAS = {
    "nose": 0.026, "left_eye": 0.025, "right_eye": 0.025, "left_ear": 0.035, "right_ear": 0.035,
    "left_shoulder": 0.079, "right_shoulder": 0.079, "left_elbow": 0.072, "right_elbow": 0.072,
    "left_wrist": 0.062, "right_wrist": 0.062, "left_hip": 0.107, "right_hip": 0.107,
    "left_knee": 0.087, "right_knee": 0.087, "left_ankle": 0.089, "right_ankle": 0.089,
}


@dataclass(frozen=True)
class KeypointLayout:
    """An immutable description of a keypoint skeleton.

    Attributes:
        name: identifier, e.g. ``"driver9"``.
        keypoints: ``K`` keypoint names, in channel order.
        limbs: ``L`` pairs ``(a, b)`` of keypoint indices; the PAF of limb ``l`` points
            from ``a`` to ``b`` and occupies channels ``K + 2l`` (x) and ``K + 2l + 1`` (y).
        flip_pairs: pairs of keypoint indices exchanged by a horizontal flip.
        sigmas: ``K`` OKS sigmas (fraction of the object scale), as COCO defines them.
        masks: names of per-image mask channels (e.g. ``("seatbelt",)``).

    :attr:`can_flip` is False when a keypoint's name has a side (left/right) but the keypoint
    is in no flip pair: a horizontal flip would then leave it on the wrong side, so flip
    augmentation is off for such a layout.
    """

    name: str
    keypoints: tuple[str, ...]
    limbs: tuple[tuple[int, int], ...]
    flip_pairs: tuple[tuple[int, int], ...] = ()
    sigmas: tuple[float, ...] = ()
    masks: tuple[str, ...] = ()
    _flip_index: tuple[int, ...] = field(default=(), repr=False, compare=False)
    _can_flip: bool = field(default=True, repr=False, compare=False)

    def __post_init__(self) -> None:
        k = len(self.keypoints)
        where = f"layout '{self.name}'"
        if k == 0:
            raise LayoutError(f"{where}: has no keypoints")
        if len(set(self.keypoints)) != k:
            raise LayoutError(f"{where}: keypoint names must be unique")
        for a, b in self.limbs + self.flip_pairs:
            if not (0 <= a < k and 0 <= b < k) or a == b:
                raise LayoutError(f"{where}: pair ({a}, {b}) is not two distinct keypoints of {k}")
        sig = self.sigmas or tuple([0.05] * k)
        if len(sig) != k:
            raise LayoutError(f"{where}: {len(sig)} sigmas for {k} keypoints")
        object.__setattr__(self, "sigmas", tuple(float(s) for s in sig))
        perm = list(range(k))
        seen: set[int] = set()
        for a, b in self.flip_pairs:
            if a in seen or b in seen:
                raise LayoutError(f"{where}: keypoint in more than one flip pair")
            seen |= {a, b}
            perm[a], perm[b] = b, a
        object.__setattr__(self, "_flip_index", tuple(perm))
        sided = {i for i, n in enumerate(self.keypoints) if split_side(n)[0] is not None}
        object.__setattr__(self, "_can_flip", sided <= seen)

    # ---- sizes -------------------------------------------------------------------------
    @property
    def num_keypoints(self) -> int:
        return len(self.keypoints)

    @property
    def num_limbs(self) -> int:
        return len(self.limbs)

    @property
    def num_masks(self) -> int:
        return len(self.masks)

    @property
    def num_channels(self) -> int:
        """Pose-map channels: K heatmaps + 2L PAF components + M masks."""
        return self.num_keypoints + 2 * self.num_limbs + self.num_masks

    @property
    def flip_index(self) -> np.ndarray:
        """(K,) permutation: keypoint ``i`` of a flipped image is keypoint ``flip_index[i]``."""
        return np.asarray(self._flip_index, dtype=np.int64)

    @property
    def can_flip(self) -> bool:
        """Whether a horizontal flip keeps every sided keypoint correct (see the class docstring)."""
        return self._can_flip

    def index(self, name: str) -> int:
        try:
            return self.keypoints.index(name)
        except ValueError:
            raise LayoutError(f"layout '{self.name}' has no keypoint '{name}'") from None

    # ---- (de)serialisation --------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "keypoints": list(self.keypoints),
            "limbs": [list(p) for p in self.limbs],
            "flip_pairs": [list(p) for p in self.flip_pairs],
            "sigmas": list(self.sigmas),
            "masks": list(self.masks),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "layout") -> "KeypointLayout":
        if not isinstance(d, dict) or "keypoints" not in d:
            raise LayoutError(f"{source}: a layout needs at least 'name' and 'keypoints'")
        names = tuple(str(n) for n in d["keypoints"])

        def idx(v: Any) -> int:
            if isinstance(v, str):
                if v not in names:
                    raise LayoutError(f"{source}: unknown keypoint '{v}'")
                return names.index(v)
            return int(v)

        def pairs(key: str) -> tuple[tuple[int, int], ...]:
            try:
                return tuple((idx(a), idx(b)) for a, b in d.get(key) or [])
            except (TypeError, ValueError) as e:
                raise LayoutError(f"{source}: '{key}' must be a list of pairs ({e})") from None

        return cls(
            name=str(d.get("name", Path(source).stem)),
            keypoints=names,
            limbs=pairs("limbs"),
            flip_pairs=pairs("flip_pairs"),
            sigmas=tuple(d.get("sigmas") or ()),
            masks=tuple(d.get("masks") or ()),
        )

    @classmethod
    def from_yaml(cls, path: str | Path) -> "KeypointLayout":
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except OSError as e:
            raise LayoutError(f"{path}: cannot read layout file ({e.strerror})") from None
        except yaml.YAMLError as e:
            from ..config import yaml_error_line

            raise LayoutError(yaml_error_line(path, e)) from None
        return cls.from_dict(data, source=str(path))

    def with_masks(self, masks: Sequence[str]) -> "KeypointLayout":
        d = self.to_dict()
        d["masks"] = list(masks)
        return KeypointLayout.from_dict(d, source=self.name)


def _build(name: str, keypoints: list[str], limbs: list[tuple[str, str]], masks=()) -> KeypointLayout:
    flip, _ = infer_flip_pairs(keypoints)
    sig, _ = infer_sigmas(keypoints)  # COCO's values; the neck takes the shoulders' mean
    return KeypointLayout.from_dict(
        {"name": name, "keypoints": keypoints, "limbs": limbs, "flip_pairs": flip, "sigmas": sig,
         "masks": list(masks)}, source=name)


DRIVER9 = _build(
    "driver9",
    ["right_wrist", "right_elbow", "right_shoulder", "neck", "left_shoulder", "left_elbow",
     "left_wrist", "right_hip", "left_hip"],
    [("neck", "right_shoulder"), ("right_shoulder", "right_elbow"), ("right_elbow", "right_wrist"),
     ("neck", "left_shoulder"), ("left_shoulder", "left_elbow"), ("left_elbow", "left_wrist"),
     ("neck", "right_hip"), ("neck", "left_hip")],
    masks=("seatbelt",),
)

_COCO_NAMES = list(COCO_SIGMAS)
# COCO's own 1-based skeleton (as in person_keypoints_*.json), converted to names.
_COCO_SKELETON = [[16, 14], [14, 12], [17, 15], [15, 13], [12, 13], [6, 12], [7, 13], [6, 7], [6, 8],
                  [7, 9], [8, 10], [9, 11], [2, 3], [1, 2], [1, 3], [2, 4], [3, 5], [4, 6], [5, 7]]
COCO17 = _build("coco17", _COCO_NAMES, [(_COCO_NAMES[a - 1], _COCO_NAMES[b - 1]) for a, b in _COCO_SKELETON])

MPII16_NAMES = ["right_ankle", "right_knee", "right_hip", "left_hip", "left_knee", "left_ankle",
                "pelvis", "thorax", "upper_neck", "head_top", "right_wrist", "right_elbow",
                "right_shoulder", "left_shoulder", "left_elbow", "left_wrist"]
MPII16 = _build("mpii16", MPII16_NAMES, [
    ("right_ankle", "right_knee"), ("right_knee", "right_hip"), ("right_hip", "pelvis"), ("pelvis", "left_hip"),
    ("left_hip", "left_knee"), ("left_knee", "left_ankle"), ("pelvis", "thorax"), ("thorax", "upper_neck"),
    ("upper_neck", "head_top"), ("right_wrist", "right_elbow"), ("right_elbow", "right_shoulder"),
    ("right_shoulder", "thorax"), ("thorax", "left_shoulder"), ("left_shoulder", "left_elbow"),
    ("left_elbow", "left_wrist")])

BLAZEPOSE33_NAMES = [
    "nose", "left_eye_inner", "left_eye", "left_eye_outer", "right_eye_inner", "right_eye",
    "right_eye_outer", "left_ear", "right_ear", "mouth_left", "mouth_right", "left_shoulder",
    "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_pinky",
    "right_pinky", "left_index", "right_index", "left_thumb", "right_thumb", "left_hip",
    "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle", "left_heel",
    "right_heel", "left_foot_index", "right_foot_index"]
# MediaPipe's POSE_CONNECTIONS
_BP_EDGES = [(0, 1), (1, 2), (2, 3), (3, 7), (0, 4), (4, 5), (5, 6), (6, 8), (9, 10), (11, 12), (11, 13), (13, 15),
             (15, 17), (15, 19), (15, 21), (17, 19), (12, 14), (14, 16), (16, 18), (16, 20), (16, 22), (18, 20),
             (11, 23), (12, 24), (23, 24), (23, 25), (24, 26), (25, 27), (26, 28), (27, 29), (28, 30), (29, 31),
             (30, 32), (27, 31), (28, 32)]
BLAZEPOSE33 = _build("blazepose33", BLAZEPOSE33_NAMES,
                     [(BLAZEPOSE33_NAMES[a], BLAZEPOSE33_NAMES[b]) for a, b in _BP_EDGES])

BUILTIN_LAYOUTS: dict[str, KeypointLayout] = {"driver9": DRIVER9, "coco17": COCO17, "mpii16": MPII16,
                                              "blazepose33": BLAZEPOSE33}


def get_layout(spec: "str | Path | KeypointLayout") -> KeypointLayout:
    """A built-in layout by name, or a user layout from a YAML file path."""
    if isinstance(spec, KeypointLayout):
        return spec
    s = str(spec)
    if s in BUILTIN_LAYOUTS:
        return BUILTIN_LAYOUTS[s]
    if s.endswith((".yaml", ".yml")) or Path(s).is_file():
        return KeypointLayout.from_yaml(s)
    raise LayoutError(f"unknown layout '{s}': use one of {sorted(BUILTIN_LAYOUTS)} or a YAML file")
