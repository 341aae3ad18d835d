"""The one typed sample every part of posesynth passes around."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Sample", "pad_people", "label_meta", "mask_labelled", "time_order"]


@dataclass
class Sample:
    """An image with its people's keypoints and its masks.

    Attributes:
        image: ``(H, W, 3)`` uint8 RGB.
        keypoints: ``(P, K, 3)`` float32, ``[x, y, v]`` per keypoint in input pixels
            (pixel centres at integer coordinates, OpenCV's convention); ``v`` is COCO's
            visibility: 0 unlabelled, 1 labelled but occluded, 2 visible.  ``P`` may be 0.
        masks: ``(M, H, W)`` uint8 in {0, 1}, one per mask name of the layout (e.g. seatbelt).
        image_id: the COCO image id.
        file_name: the image's file name relative to the dataset's image folder.
        meta: free-form provenance (source image id, perturbation, seed, ...).
    """

    image: np.ndarray
    keypoints: np.ndarray
    masks: np.ndarray
    image_id: int = 0
    file_name: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        kp = np.asarray(self.keypoints, dtype=np.float32)
        self.keypoints = kp[None] if kp.ndim == 2 else kp
        if self.masks is None:
            self.masks = np.zeros((0,) + self.image.shape[:2], np.uint8)

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def num_people(self) -> int:
        return int(self.keypoints.shape[0])

    def copy(self) -> "Sample":
        """A deep copy: no array is shared with the original."""
        return Sample(self.image.copy(), self.keypoints.copy(), self.masks.copy(),
                      self.image_id, self.file_name, dict(self.meta))


def label_meta(sample: Sample) -> dict[str, Any]:
    """What of ``sample.meta`` says how it is labelled (``mask_labelled``), for a new sample
    made from it (a render, a crop, a copy written elsewhere): ``{}`` when it has none."""
    return {"mask_labelled": sample.meta["mask_labelled"]} if "mask_labelled" in sample.meta else {}


def mask_labelled(sample: Sample) -> list[bool]:
    """``(M,)``: whether each of the sample's masks is labelled (``meta["mask_labelled"]``, set
    by the readers: a COCO mask its category does not declare or an image entry sets to null,
    or a format without masks; absent: all labelled)."""
    m = sample.masks.shape[0]
    flags = sample.meta.get("mask_labelled")
    return [bool(f) for f in flags] if isinstance(flags, (list, tuple)) and len(flags) == m else [True] * m


def pad_people(keypoints: "np.ndarray | list[np.ndarray]", people: "int | None" = None,
               num_keypoints: "int | None" = None) -> np.ndarray:
    """People padded (or cut) to a fixed count with unlabelled rows (``v = 0``).

    ``keypoints``: one image's ``(P, K, 3)`` -> ``(people, K, 3)``; or a list of them (one per
    image) -> ``(B, people, K, 3)``, ``people`` defaulting to the largest ``P`` (at least 1).
    ``num_keypoints`` is needed only when every array is empty of people and has no ``K``."""
    if isinstance(keypoints, (list, tuple)):
        k = num_keypoints if num_keypoints is not None else next(
            (int(np.shape(x)[-2]) for x in keypoints if np.ndim(x) == 3), 0)
        p = people if people is not None else max(max((len(x) for x in keypoints), default=1), 1)
        return np.stack([pad_people(x, p, k) for x in keypoints]) if len(keypoints) else np.zeros((0, p, k, 3),
                                                                                                  np.float32)
    kp = np.asarray(keypoints, np.float32)
    k = kp.shape[-2] if kp.ndim == 3 else int(num_keypoints or 0)
    p = max(len(kp), 1) if people is None else people
    out = np.zeros((p, k, 3), np.float32)
    if kp.ndim == 3 and len(kp):
        out[:min(len(kp), p)] = kp[:p]
    return out


def time_order(samples: "list[Any]") -> np.ndarray:
    """The order in time of a clip's ``samples`` (:class:`Sample`, or anything with ``meta``
    and ``image_id``): by their ``frame_id`` where every sample has one and they are distinct
    integers, else by image id where those are (several clips each numbered from 0), else as
    listed; the indices, ``(N,)``."""
    fids, iids = [s.meta.get("frame_id") for s in samples], [s.image_id for s in samples]

    def distinct_ints(v: list) -> bool:
        ints = all(isinstance(x, (int, np.integer)) and not isinstance(x, bool) for x in v)
        return ints and len(set(v)) == len(v)

    key = next((k for k in (fids, iids) if distinct_ints(k)), None)
    if key is None:
        return np.arange(len(samples))
    return np.argsort(np.asarray(key, np.int64), kind="stable")
