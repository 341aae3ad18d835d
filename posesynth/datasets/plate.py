"""The empty scene behind the person of a static-camera clip: a background plate.

In a video from a camera that does not move, the background behind an arm is seen in the
frames where the arm is elsewhere.  :func:`build_plate` takes the per-pixel median of a clip's
frames over the pixels no person covers (:func:`person_mask`: capsules around every bone of
the layout, discs at the keypoints, the torso and the head), so a renderer that moves an arm can
fill the area the arm leaves with what was really there instead of inpainting it.

The plate records which pixels it knows (seen uncovered in at least ``min_count`` frames) and
how far the frames differ from it outside the people (:attr:`BackgroundPlate.residual`, grey
levels): a moving camera, or a set of unrelated photos, is refused with that figure.

Saved as one PNG (RGBA; alpha 255 where known) so it travels with a run and opens in any viewer.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import cv2
import numpy as np

from ..errors import ConfigError, OutputError
from ..io import atomic_write_bytes, atomic_write_json
from .geometry import torso_polygon, torso_size
from .layouts import KeypointLayout

__all__ = ["BackgroundPlate", "person_mask", "arm_part_indices", "build_plate", "plate_from_dataset",
           "load_background", "background_option", "MAX_RESIDUAL",
           "BACKGROUND_FILE"]

# Frames of a static camera differ from their median background by sensor noise and
# compression (2-6 grey levels on the squats clip); unrelated photos by tens.
MAX_RESIDUAL = 12.0
BACKGROUND_FILE = "background.png"   # a refine run's plate, in its run folder


@dataclass
class BackgroundPlate:
    """A static camera's empty scene.

    Attributes:
        image: ``(H, W, 3)`` uint8 RGB, the per-pixel median of the uncovered frames (0 where
            unknown).
        known: ``(H, W)`` bool, pixels seen uncovered in at least ``min_count`` frames.
        frames: how many frames it was built from.
        residual: median over frames of the mean absolute difference (grey levels, 0-255)
            between a frame and the plate on the known pixels no person covers in that frame.
    """

    image: np.ndarray
    known: np.ndarray
    frames: int
    residual: float

    @property
    def size(self) -> tuple[int, int]:
        """``(H, W)``."""
        return self.known.shape[:2]

    def save(self, path: "str | Path") -> None:
        """An RGBA PNG (alpha 255 where known), and beside it ``<name>.json`` with ``frames``
        and ``residual`` (the JSON first: a plate never lies beside another plate's figures)."""
        rgba = np.concatenate([self.image, (self.known * 255).astype(np.uint8)[..., None]], -1)
        ok, png = cv2.imencode(".png", cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
        if not ok:
            raise OutputError(f"{path}: could not encode the background plate")
        atomic_write_json(Path(path).with_suffix(".json"), {"frames": self.frames, "residual": self.residual,
                                                            "known": float(self.known.mean())})
        atomic_write_bytes(path, png.tobytes())

    def crop(self, box: tuple[int, int, int], size: int, flip: bool = False) -> "BackgroundPlate":
        """The plate of a square crop (:func:`~posesynth.datasets.crops.crop`'s ``box``, resized
        to ``size``; mirrored with ``flip``), to go with the same crop of a frame."""
        from .crops import crop

        im = crop(self.image, box, size)
        # known only where everything resampled into the pixel is known (no unknown black mixed in)
        known = crop(self.known.astype(np.float32), box, size) >= 0.999
        x0, y0, side = box   # what the crop's edge padding invents is not known
        h, w = self.size
        if x0 < 0 or y0 < 0 or x0 + side > w or y0 + side > h:
            yy, xx = np.mgrid[0:size, 0:size]
            px, py = x0 + (xx + 0.5) * side / size, y0 + (yy + 0.5) * side / size
            known &= (px >= 0) & (px < w) & (py >= 0) & (py < h)
        if flip:
            im, known = im[:, ::-1], known[:, ::-1]
        return BackgroundPlate(np.ascontiguousarray(im), np.ascontiguousarray(known), self.frames, self.residual)

    @classmethod
    def load(cls, path: "str | Path") -> "BackgroundPlate":
        """A plate saved by :meth:`save`, or any image of the empty scene (no alpha: all known;
        ``frames`` 0 when no JSON says)."""
        info = Path(path).with_suffix(".json")
        frames, residual = 0, 0.0
        try:   # a JSON of something else beside a photo of the empty scene is not the plate's
            meta = json.loads(info.read_text()) if info.exists() else {}
            if isinstance(meta, dict) and {"frames", "residual"} <= set(meta):
                frames, residual = int(meta["frames"]), float(meta["residual"])
        except (ValueError, TypeError, OSError):
            pass
        im = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if im is None:
            raise ConfigError(f"{path}: not an image that can be read (a background plate is a PNG of the empty scene)")
        if im.ndim == 2:
            im = cv2.cvtColor(im, cv2.COLOR_GRAY2BGR)
        if im.shape[2] == 4:
            rgb, known = cv2.cvtColor(im[..., :3], cv2.COLOR_BGR2RGB), im[..., 3] >= 128
        else:
            rgb, known = cv2.cvtColor(im[..., :3], cv2.COLOR_BGR2RGB), np.ones(im.shape[:2], bool)
        if im.dtype != np.uint8:
            raise ConfigError(f"{path}: a background plate must be an 8-bit image, not {im.dtype}")
        return cls(np.ascontiguousarray(rgb), known, frames, residual)


ARM_PARTS = ("elbow", "wrist", "pinky", "index", "thumb", "hand")


def arm_part_indices(layout: KeypointLayout, side: str) -> list[int]:
    """The keypoints of one side's arm below the shoulder (elbow, wrist and hand points): the
    names ``{side}_{part}`` with ``part`` one of :data:`ARM_PARTS` (plural too; not
    ``left_foot_index``)."""
    names = {f"{side}_{j}{s}" for j in ARM_PARTS for s in ("", "s")}
    return [i for i, n in enumerate(layout.keypoints) if n in names]


def person_mask(kp: np.ndarray, layout: KeypointLayout, size: tuple[int, int], radius: float = 0.3) -> np.ndarray:
    """Where the people of one frame may be, ``(H, W)`` bool: for each person ``(P, K, 3)``
    with a torso size ``t`` (px), capsules of radius ``radius * t`` around every bone of the
    layout whose ends are labelled, discs of that radius at every labelled keypoint, the torso
    quadrilateral, and the head (a disc of radius ``0.45 t`` centred ``0.3 t`` above the neck or
    shoulders' midpoint, away from the hips).  A person without a torso size is covered by their
    keypoints' bounding box grown by a quarter of its larger side."""
    h, w = size
    out = np.zeros((h, w), np.uint8)
    kp = np.asarray(kp, np.float64)
    for p in kp:
        vis = p[:, 2] > 0
        if not vis.any():
            continue
        ts = torso_size(p, layout)
        if not np.isfinite(ts) or ts < 1:
            lo, hi = p[vis, :2].min(0), p[vis, :2].max(0)
            g = 0.25 * max(hi - lo) + 2
            x0, y0 = np.floor(lo - g).astype(int)
            x1, y1 = np.ceil(hi + g).astype(int)
            out[max(y0, 0):max(y1 + 1, 0), max(x0, 0):max(x1 + 1, 0)] = 1
            continue
        r = max(int(round(radius * ts)), 1)
        for a, b in layout.limbs:
            if vis[a] and vis[b]:
                cv2.line(out, tuple(np.round(p[a, :2]).astype(int)), tuple(np.round(p[b, :2]).astype(int)), 1,
                         thickness=2 * r + 1)
        for x, y in p[vis, :2]:
            cv2.circle(out, (int(round(x)), int(round(y))), r, 1, -1)
        poly = torso_polygon(p, layout)
        if poly is not None:
            cv2.fillPoly(out, [np.round(poly).astype(np.int32)], 1)
            top, hips = poly[:2].mean(0), poly[2:].mean(0)
            if "neck" in layout.keypoints and vis[layout.keypoints.index("neck")]:
                top = p[layout.keypoints.index("neck"), :2]
            up = (top - hips) / max(np.linalg.norm(top - hips), 1e-9)
            c = top + 0.3 * ts * up
            cv2.circle(out, (int(round(c[0])), int(round(c[1]))), max(int(round(0.45 * ts)), 1), 1, -1)
    return out.astype(bool)


def build_plate(frames: Iterable[tuple[np.ndarray, np.ndarray]], layout: KeypointLayout, min_count: int = 3,
                radius: float = 0.3, source: str = "the clip", max_residual: float = MAX_RESIDUAL
                ) -> BackgroundPlate:
    """The background plate of a static camera's frames.

    Args:
        frames: ``(image (H, W, 3) uint8, keypoints (P, K, 3))`` per frame, all of one size.
        layout: the keypoints' layout (its bones shape :func:`person_mask`).
        min_count: a pixel is known where at least this many frames leave it uncovered.
        radius: :func:`person_mask`'s capsule radius (fraction of the torso size).
        source: names the frames in errors.
        max_residual: refuse (``ConfigError``) frames that differ from their plate by more
            than this many grey levels outside the people: not a static camera.
    Returns:
        The plate; pixels known in fewer than ``min_count`` frames are unknown.
    """
    ims, covers = [], []
    for im, kp in frames:
        if ims and im.shape != ims[0].shape:
            raise ConfigError(f"{source}: frames of sizes {ims[0].shape[1]}x{ims[0].shape[0]} and "
                              f"{im.shape[1]}x{im.shape[0]}; a background plate needs one static camera's frames")
        ims.append(np.asarray(im, np.uint8))
        covers.append(person_mask(kp, layout, im.shape[:2], radius))
    if len(ims) < min_count:
        raise ConfigError(f"{source}: {len(ims)} frames; a background plate needs at least {min_count}")
    n, (h, w) = len(ims), ims[0].shape[:2]
    cover = np.stack(covers)                                        # (N, H, W)
    count = (~cover).sum(0)
    plate = np.zeros((h, w, 3), np.uint8)
    rows = max(1, int(2 ** 24 // max(n * w * 3, 1)))                # bands of ~16M values
    for y in range(0, h, rows):
        band = np.stack([im[y:y + rows] for im in ims]).astype(np.uint16)     # (N, b, W, 3)
        band[cover[:, y:y + rows]] = 256                            # covered: sorts last
        band.sort(0)
        c = count[y:y + rows]
        mid = np.clip((c - 1) // 2, 0, n - 1)                      # lower median of the uncovered
        lo = np.take_along_axis(band, mid[None, :, :, None].repeat(3, -1), 0)[0]
        hi = np.take_along_axis(band, np.clip(c // 2, 0, n - 1)[None, :, :, None].repeat(3, -1), 0)[0]
        med = (lo.astype(np.float32) + hi) / 2
        plate[y:y + rows] = np.where((c >= 1)[..., None], np.minimum(med, 255).round(), 0).astype(np.uint8)
    known = count >= min_count
    diffs = []
    for im, cv in zip(ims, cover):
        sel = known & ~cv
        if sel.sum() > 0.01 * h * w:
            diffs.append(float(np.abs(im[sel].astype(np.int16) - plate[sel]).mean()))
    if not known.any() or not diffs:
        raise ConfigError(f"{source}: no pixel was seen uncovered by the people in {min_count} of its {n} frames; a "
                          "background plate needs frames in which the person moves away from what is behind them")
    residual = float(np.median(diffs))
    if residual > max_residual:
        raise ConfigError(f"{source}: the frames differ from their median background by {residual:.1f} grey levels "
                          f"outside the person (a static camera: below {max_residual:g}); a background plate needs "
                          "frames of one camera that does not move")
    return BackgroundPlate(plate, known, n, residual)


def plate_from_dataset(ds, max_frames: int = 64, min_count: int = 3, source: str = "") -> BackgroundPlate:
    """:func:`build_plate` over up to ``max_frames`` frames of a dataset (evenly spaced)."""
    n = len(ds)
    idx = np.unique(np.linspace(0, n - 1, min(n, max_frames)).round().astype(int)) if n else []
    samples = (ds[int(i)] for i in idx)
    return build_plate(((s.image, s.keypoints) for s in samples), ds.layout, min_count,
                       source=source or str(getattr(ds, "root", "the dataset")))


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def background_option(spec: str, **data_options: Any) -> "BackgroundPlate | bool | None":
    """A command's ``--background``: unset -> ``None`` (a refine run's own plate, if any),
    ``none`` -> ``False`` (no plate at all), else :func:`load_background`."""
    if not spec:
        return None
    if spec.strip().lower() == "none":
        return False
    return load_background(spec, **data_options)


def load_background(spec: str, **data_options: Any) -> BackgroundPlate:
    """``--background``: a PNG (a plate a run saved, or a photo of the empty scene), a refine
    run's folder (its ``background.png``), or a clip of the static camera (a dataset folder or
    annotation file) whose plate is built here (:func:`plate_from_dataset`)."""
    from .formats import open_dataset

    from ..errors import PosesynthError

    p = Path(spec)
    if not p.exists():
        raise ConfigError(f"--background {spec}: no such file or folder (a clip of the static camera, a PNG of the "
                          "empty scene, or a refine run that has one)")
    if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
        return BackgroundPlate.load(p)
    if (p / BACKGROUND_FILE).exists():   # a refine run's own plate
        return BackgroundPlate.load(p / BACKGROUND_FILE)
    try:
        return plate_from_dataset(open_dataset(spec, **data_options), source=str(spec))
    except PosesynthError as e:
        msg = str(e)
        raise ConfigError(msg if msg.startswith("--background") else f"--background {msg}") from None
