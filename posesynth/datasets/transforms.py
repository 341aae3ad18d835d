"""Explicit, composable data transforms on :class:`Sample` (in the spirit of mmpose, without
a registry).  Every transform is a callable ``t(sample, rng) -> Sample`` that returns a new
sample and never modifies its input.

Geometric transforms move image, keypoints and masks together with one affine matrix
(pixel centres at integer coordinates).  Keypoints that leave the image become unlabelled
(``v = 0``); none is deleted and their order never changes, except that a horizontal flip
exchanges left and right keypoints (so PAF channels, rendered afterwards, follow).
Photometric transforms touch the image only.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import cv2
import numpy as np

from .layouts import KeypointLayout
from .sample import Sample

__all__ = ["Transform", "Compose", "RandomAffine", "Resize", "HorizontalFlip", "Photometric",
           "warp_sample", "affine_matrix", "Fit", "fit_matrix", "invert_affine", "apply_affine", "FIT_MODES"]

Transform = Callable[[Sample, np.random.Generator], Sample]


@dataclass
class Compose:
    """Apply transforms in order."""

    transforms: Sequence[Transform]

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        for t in self.transforms:
            sample = t(sample, rng)
        return sample


def affine_matrix(in_size: tuple[int, int], out_size: tuple[int, int], scale_x: float = 1.0,
                  scale_y: float = 1.0, angle_deg: float = 0.0, shift: tuple[float, float] = (0.0, 0.0),
                  flip: bool = False) -> np.ndarray:
    """2x3 matrix from input to output pixel coordinates.

    The input is first fitted to the output (per-axis ``out/in``), then flipped
    horizontally about its centre, scaled by ``scale_x``/``scale_y``, rotated
    counter-clockwise (as seen on screen) by ``angle_deg`` about the centre, and shifted by
    ``shift`` output pixels.  Sizes are ``(H, W)``.
    """
    (h, w), (oh, ow) = in_size, out_size
    c_in = np.array([(w - 1) / 2, (h - 1) / 2])
    c_out = np.array([(ow - 1) / 2, (oh - 1) / 2])
    s = np.diag([ow / w * scale_x * (-1 if flip else 1), oh / h * scale_y])
    t = np.deg2rad(angle_deg)
    r = np.array([[np.cos(t), np.sin(t)], [-np.sin(t), np.cos(t)]])
    a = r @ s
    b = c_out + np.asarray(shift) - a @ c_in
    return np.concatenate([a, b[:, None]], axis=1).astype(np.float64)


def warp_sample(sample: Sample, matrix: np.ndarray, out_size: tuple[int, int],
                flip_index: "np.ndarray | None" = None, border_value: tuple[int, int, int] = (0, 0, 0)) -> Sample:
    """Apply a 2x3 affine ``matrix`` to image (bilinear), masks (nearest) and keypoints.

    ``flip_index`` (the layout's flip permutation) is applied to the keypoints when the
    matrix mirrors the image.  Keypoints that land outside the output become ``v = 0``.
    """
    oh, ow = out_size
    img = cv2.warpAffine(sample.image, matrix, (ow, oh), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=border_value)
    masks = np.zeros((sample.masks.shape[0], oh, ow), np.uint8)
    for i in range(0, sample.masks.shape[0], 4):  # cv2 warps up to 4 channels at once
        chunk = np.ascontiguousarray(sample.masks[i:i + 4].transpose(1, 2, 0))
        warped = cv2.warpAffine(chunk, matrix, (ow, oh), flags=cv2.INTER_NEAREST,
                                borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        masks[i:i + 4] = warped.reshape(oh, ow, -1).transpose(2, 0, 1)
    kp = sample.keypoints.copy()
    if kp.size:
        kp[..., :2] = kp[..., :2] @ matrix[:, :2].T + matrix[:, 2]
        if flip_index is not None and np.linalg.det(matrix[:, :2]) < 0:
            kp = kp[:, flip_index]
        x, y = kp[..., 0], kp[..., 1]
        outside = (x < 0) | (y < 0) | (x > ow - 1) | (y > oh - 1)
        kp[..., 2] = np.where(outside, 0.0, kp[..., 2])
    return Sample(img, kp, masks, sample.image_id, sample.file_name, dict(sample.meta))


@dataclass
class Resize:
    """Resize to ``out_size = (H, W)`` (aspect ratio not kept)."""

    out_size: tuple[int, int]

    def __call__(self, sample: Sample, rng: "np.random.Generator | None" = None) -> Sample:
        if sample.image.shape[:2] == tuple(self.out_size):
            return sample.copy()
        m = affine_matrix(sample.image.shape[:2], self.out_size)
        return warp_sample(sample, m, self.out_size)


@dataclass
class HorizontalFlip:
    """Mirror left-right with probability ``p``, exchanging the layout's flip pairs.

    A layout whose sided keypoints have no flip pairs (``layout.can_flip`` is False) is never
    flipped: its left labels would end up on the right.
    """

    layout: KeypointLayout
    p: float = 1.0

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        if (self.p < 1.0 and rng.random() >= self.p) or not self.layout.can_flip:
            return sample.copy()
        size = sample.image.shape[:2]
        return warp_sample(sample, affine_matrix(size, size, flip=True), size, self.layout.flip_index)


@dataclass
class RandomAffine:
    """Random scale (with separate x/y scales), rotation, translation and flip, then output size.

    Attributes:
        out_size: ``(H, W)`` of the result; ``None`` keeps the input size.
        scale: range of the overall scale factor.
        aspect: range of the x/y scale ratio (``sx = s * sqrt(a)``, ``sy = s / sqrt(a)``).
        rotate: maximum absolute rotation in degrees.
        translate: maximum shift as a fraction of the output size.
        flip_prob: probability of a horizontal flip (needs ``layout``; off where
            ``layout.can_flip`` is False).
        border_value: RGB fill for uncovered pixels.
    """

    out_size: "tuple[int, int] | None" = None
    scale: tuple[float, float] = (0.8, 1.2)
    aspect: tuple[float, float] = (0.9, 1.1)
    rotate: float = 15.0
    translate: float = 0.1
    flip_prob: float = 0.5
    layout: "KeypointLayout | None" = None
    border_value: tuple[int, int, int] = (0, 0, 0)

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        in_size = sample.image.shape[:2]
        out = tuple(self.out_size or in_size)
        s = rng.uniform(*self.scale)
        a = np.sqrt(rng.uniform(*self.aspect))
        angle = rng.uniform(-self.rotate, self.rotate)
        shift = rng.uniform(-self.translate, self.translate, size=2) * np.array([out[1], out[0]])
        # (a layout with sided keypoints but no flip pairs is never flipped: see KeypointLayout.can_flip)
        flip = self.layout is not None and rng.random() < self.flip_prob and self.layout.can_flip
        m = affine_matrix(in_size, out, s * a, s / a, angle, tuple(shift), flip)
        return warp_sample(sample, m, out, self.layout.flip_index if self.layout else None, self.border_value)


@dataclass
class Photometric:
    """Albumentations colour transforms on the image only (keypoints and masks untouched).

    ``pipeline`` is any albumentations transform; the default varies brightness, contrast,
    hue/saturation, adds sensor noise and occasional blur.
    """

    pipeline: object = field(default=None)

    def __post_init__(self) -> None:
        if self.pipeline is None:
            import albumentations as A

            self.pipeline = A.Compose([
                A.RandomBrightnessContrast(brightness_limit=0.25, contrast_limit=0.25, p=0.8),
                A.HueSaturationValue(hue_shift_limit=8, sat_shift_limit=20, val_shift_limit=10, p=0.5),
                A.GaussNoise(std_range=(0.01, 0.05), p=0.3),
                A.GaussianBlur(blur_limit=(3, 5), p=0.1),
            ])

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        if hasattr(self.pipeline, "set_random_seed"):
            self.pipeline.set_random_seed(int(rng.integers(2**31 - 1)))
        image = self.pipeline(image=sample.image)["image"]
        return Sample(image, sample.keypoints.copy(), sample.masks.copy(), sample.image_id,
                      sample.file_name, dict(sample.meta))


FIT_MODES = ("letterbox", "stretch")


def fit_matrix(in_size: tuple[int, int], out_size: tuple[int, int], mode: str = "letterbox") -> np.ndarray:
    """2x3 matrix from an image of ``in_size`` to the network input ``out_size`` (``(H, W)``).

    ``stretch`` scales each axis to fit (the aspect ratio changes); ``letterbox`` scales both
    axes by the same factor and centres the image, leaving borders.  Pixel centres are at
    integer coordinates: ``x_out = s * (x + 0.5) - 0.5 + pad``.
    """
    (h, w), (oh, ow) = in_size, out_size
    if mode == "stretch":
        sx, sy = ow / w, oh / h
        px = py = 0.0
    elif mode == "letterbox":
        sx = sy = min(ow / w, oh / h)
        px, py = (ow - sx * w) / 2, (oh - sy * h) / 2
    else:
        raise ValueError(f"fit mode must be one of {FIT_MODES}, not {mode!r}")
    return np.array([[sx, 0.0, 0.5 * sx - 0.5 + px], [0.0, sy, 0.5 * sy - 0.5 + py]], np.float64)


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    """The inverse of a 2x3 affine matrix."""
    a = np.asarray(matrix, np.float64)
    inv = np.linalg.inv(a[:, :2])
    return np.concatenate([inv, (-inv @ a[:, 2])[:, None]], 1)


def apply_affine(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """``(..., 3)`` keypoints ``[x, y, v]`` mapped by a 2x3 matrix (``v`` kept)."""
    out = np.array(points, np.float32, copy=True)
    out[..., :2] = out[..., :2] @ np.asarray(matrix, np.float32)[:, :2].T + np.asarray(matrix, np.float32)[:, 2]
    return out


@dataclass
class Fit:
    """Bring a sample to the network input ``out_size`` (``(H, W)``), keeping the aspect ratio
    (``letterbox``, the default, black borders) or not (``stretch``).  The matrix used is
    recorded in ``meta["to_input"]`` so predictions can be mapped back to the image."""

    out_size: tuple[int, int]
    mode: str = "letterbox"
    border_value: tuple[int, int, int] = (0, 0, 0)

    def __call__(self, sample: Sample, rng: "np.random.Generator | None" = None) -> Sample:
        m = fit_matrix(sample.image.shape[:2], tuple(self.out_size), self.mode)
        if sample.image.shape[:2] == tuple(self.out_size):
            out = sample.copy()
        else:
            out = warp_sample(sample, m, tuple(self.out_size), border_value=self.border_value)
        out.meta["to_input"] = m
        return out
