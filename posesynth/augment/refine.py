"""Refine mode: a SPADE generator that corrects the limb warp, on crops, trained on the user's
own images (``train-gan --mode refine``, ``--renderer refine --gan RUN``).

- :func:`crop_box` and :func:`crop`: a square around the changed region (the moved arms'
  capsules at their old and new positions, plus ``margin`` of its side), cut from the image
  and resized to ``S x S`` (area averaging), with exact pixel-centre keypoint mapping.
- :class:`RefineCropDataset`: the self-supervised training samples.  For an image with pose
  ``p``, a perturbation ``p'`` is drawn and the crop is warped ``p -> p' -> p``: the round
  trip carries the warp's artifacts (cut edges, the elbow seam, the fill's smear) at the
  original pose, and the original crop is the truth.  A share ``fill_share`` of the samples
  instead has its arms erased and filled (OpenCV Telea), to be drawn back; so does an image of
  which the warp can make no round trip (arms crossed or behind the body), so every image
  teaches something (:attr:`RefineCropDataset.sample_counts`).  With a background plate and a
  limb bank (``--limb-bank``) the round trips' warp moves the bank's arms and fills the body
  from its frames, as a render with the bank does; each sample sees the bank through its crop
  (:meth:`~posesynth.augment.renderers.LimbBank.cropped`), less the image's own frame and its
  neighbours.  Items: ``image`` (truth),
  ``warped`` (W), ``region`` (M), ``maps`` (the truth's pose maps), and the pose targets, all
  at ``S x S``; ``source_index`` (the image), ``crop_box`` (``(x0, y0, side)`` in its pixels,
  int64) and ``flipped`` (bool) say where the crop came from.
- :class:`RefineRenderer`: warp at the image's own resolution, then, on the crop around M,
  ``R = G(maps(p'), W, M)``, upsampled into the crop's box: ``out = W + M * R``.  Outside M
  the output is the warp's, which is the source's there, bit for bit; an untrained (zero)
  residual returns the warp exactly.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import yaml

from ..datasets.crops import crop, crop_box, to_crop
from ..datasets.formats import KeypointSource, data_options, open_dataset, source_annotations
from ..datasets.geometry import RegionSpec, limb_region, torso_size
from ..datasets.layouts import KeypointLayout
from ..datasets.plate import BACKGROUND_FILE, BackgroundPlate, arm_part_indices, load_background, person_mask
from ..datasets.posemaps import PoseMapSpec
from ..datasets.sample import Sample, label_meta
from ..datasets.torch_dataset import image_to_tensor, max_people_of, sample_to_tensors
from ..errors import ConfigError
from ..spade.config import GANConfig
from ..spade.trainer import GANTrainer
from .perturb import PerturbConfig, Perturber
from .renderers import LimbBank, WarpRenderer, fill_hole, load_limb_bank, telea_fill

__all__ = ["RefineCropDataset", "refine_trainer"]

log = logging.getLogger(__name__)


# ---- training samples ------------------------------------------------------------------------
class RefineCropDataset(torch.utils.data.Dataset):
    """Warp round trips and erase-and-reconstruct samples on crops (see the module docstring).

    Item ``(index, epoch)`` (or ``index``) is a pure function of ``(seed, epoch, index)``.
    Images whose people have no arm to move or fill give the next image's sample.
    """

    def __init__(self, source: KeypointSource, crop_size: int = 128, margin: float = 0.25, fill_share: float = 0.3,
                 spec: PoseMapSpec = PoseMapSpec(), region: RegionSpec = RegionSpec(), perturb: str = "arms-angle",
                 seed: int = 0, flip: bool = True, max_people: "int | None" = None,
                 background: "BackgroundPlate | None" = None, bank: "LimbBank | None" = None,
                 bank_leave_out: int = 2) -> None:
        self.source, self.layout = source, source.layout
        self.size, self.margin, self.fill_share = int(crop_size), float(margin), float(fill_share)
        self.spec, self.region, self.seed, self.flip = spec, region, seed, flip
        self.warp = WarpRenderer(self.layout, region)
        self.background = background   # a static camera's plate: the warp fills from its crop
        # a static camera's frames whose arms (and bodies) the warp uses, as when the refiner renders
        # with --limb-bank; an image's own frame and the bank_leave_out frames either side of it (a
        # clip's near copies of it) are left out, as a frame the refiner renders is not in the bank
        if bank_leave_out < 0:
            raise ValueError(f"bank_leave_out must be 0 or more (frames either side of an image's own), not "
                             f"{bank_leave_out}")
        self.bank, self.bank_leave_out = bank, int(bank_leave_out)
        self.perturber = Perturber(PerturbConfig(perturb), self.layout)
        self.max_people = max_people or max_people_of(source)
        self.epoch = 0
        self.fit = "crop"
        #: this process's samples by kind: "round trip", "fill" (drawn as one) and "fill (no
        #: round trip)" (a round trip drawn that the warp could not make)
        self.sample_counts = {"round trip": 0, "fill": 0, "fill (no round trip)": 0}

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: "int | tuple[int, int]") -> dict[str, Any]:
        index, epoch = index if isinstance(index, tuple) else (index, self.epoch)
        for k in range(len(self)):
            item = self.sample((index + k) % len(self), epoch)
            if item is not None:
                item["index"], item["source_index"] = index, (index + k) % len(self)
                return item
        raise ConfigError(f"{getattr(self.source, 'path', 'the data')}: no image has a labelled arm (shoulder, elbow "
                          "and wrist) and a torso to crop around; refine mode has nothing to learn from")

    @staticmethod
    def jitter(box: tuple[int, int, int], rng: np.random.Generator) -> tuple[int, int, int]:
        """A little jitter of a crop box's place (+-5% of its side) and scale (0.95-1.1)."""
        x0, y0, side = box
        jit = rng.uniform(-0.05, 0.05, 2) * side
        side2 = max(int(round(side * rng.uniform(0.95, 1.1))), 8)
        return int(round(x0 + (side - side2) / 2 + jit[0])), int(round(y0 + (side - side2) / 2 + jit[1])), side2

    def item(self, target: Sample, warped: np.ndarray, region: np.ndarray, box: tuple[int, int, int],
             flipped: bool) -> dict[str, Any]:
        """The training item: ``target``'s tensors and pose maps (the crop the refiner must draw,
        at its pose), ``warped`` (W, ``(S, S, 3)`` uint8), ``region`` (M, ``(S, S)`` in [0, 1]),
        and where the crop came from: ``crop_box`` (x0, y0, side) in the image's pixels and
        whether it was mirrored."""
        out = sample_to_tensors(target, self.layout, self.spec.stride, self.spec, self.max_people, with_maps=True)
        out["warped"] = image_to_tensor(np.ascontiguousarray(warped))
        out["region"] = torch.from_numpy(np.ascontiguousarray(region, np.float32))[None]
        out["crop_box"] = torch.tensor(box, dtype=torch.int64)
        out["flipped"] = torch.tensor(flipped)
        return out

    def sample(self, index: int, epoch: int) -> "dict[str, Any] | None":
        """One training item of image ``index`` (``None`` when it has no arm to work on).

        A round trip the warp cannot make (it leaves every arm where it is: arms crossed or
        behind the body, at ``p`` or ``p'``; or it cannot bring one home) becomes a fill of the
        same crop.  On a clip whose hands often meet (squats: 58% of the samples fills with
        ``fill_share`` 0.3) this is what the refiner is measured with; taking the next image's
        round trip instead (fills 29%) made its renders 0.5 dB worse (README, results)."""
        rng = np.random.default_rng([self.seed, epoch, index])
        s = self.source[index]
        kp = s.keypoints[: self.max_people]
        if not len(kp):
            return None
        fill = drawn_fill = rng.random() < self.fill_share
        new = None if fill else self.perturber(kp, s.image.shape[:2], rng, s.file_name)
        box = crop_box(kp, new, self.layout, self.region, self.margin) if new is not None else None
        if box is None:   # nothing moved: an erase-and-reconstruct sample
            fill, new = True, None
            box = crop_box(kp, None, self.layout, self.region, self.margin)
            if box is None:
                return None
        box = self.jitter(box, rng)
        img = crop(s.image, box, self.size)
        masks = np.stack([crop(m, box, self.size, cv2.INTER_NEAREST) for m in s.masks]) if len(s.masks) else \
            np.zeros((0, self.size, self.size), np.uint8)
        kc = to_crop(kp, box, self.size)
        nc = to_crop(new, box, self.size) if new is not None else None
        flipped = self.flip and rng.random() < 0.5
        if flipped:
            img, masks = img[:, ::-1].copy(), masks[:, :, ::-1].copy()
            kc = _flip(kc, self.layout, self.size)
            nc = _flip(nc, self.layout, self.size) if nc is not None else None
        hw = (self.size, self.size)
        bg = self.background
        bg = bg.crop(box, self.size, flipped) if bg is not None and bg.size == s.image.shape[:2] else None
        self.warp.background = bg
        self.warp.bank = None
        if self.bank is not None and bg is not None and self.bank.size == s.image.shape[:2]:
            own = self.bank.frames_of(kp[0])
            near = (own[:, None] + np.arange(-self.bank_leave_out, self.bank_leave_out + 1)).ravel()
            self.warp.bank = self.bank.cropped(box, self.size, flipped, near)
        if not fill:   # p -> p' -> p; an arm the warp leaves where it is makes no round trip
            w1, a1, h1, drawn = self.warp.render_pose(img, kc, nc)
            warped, a2, h2, back = self.warp.render_pose(w1, drawn, kc)
            region = limb_region(kc[None], drawn[None], self.layout, hw, self.region)[0, 0].numpy()
            region = np.maximum.reduce([region, a1, a2, h1.astype(np.float32), h2.astype(np.float32)])
            # the way back must bring every arm home, or W shows an arm where the truth has none
            # (elbows and wrists come back exactly; hand points through two affines, to ~1e-5 px)
            fill = not (region > 0).any() or not np.allclose(back[..., :2], kc[..., :2], rtol=0, atol=1e-2)
        if fill:
            region = limb_region(kc[None], None, self.layout, hw, self.region)[0, 0].numpy()
            if not (region > 0).any():
                return None
            sizes = [t for t in (torso_size(p, self.layout) for p in kc) if np.isfinite(t)]
            r = max(sizes) if sizes else np.nan
            radius = (self.region.radius + self.region.dilate) * (r if np.isfinite(r) else self.size / 4)
            seen = None
            if bg is not None:   # what the plate saw behind the arms, away from the rest of the body, first
                body = np.array(kc, np.float64, copy=True)
                for side in ("right", "left"):
                    body[:, arm_part_indices(self.layout, side), 2] = 0
                seen = (region > 0) & bg.known & ~person_mask(body, self.layout, hw)
            warped = fill_hole(img, region > 0, bg.image if bg is not None else None, seen,
                               lambda im, rest: telea_fill(im, rest, radius))
        out = self.item(Sample(img, kc, masks, meta=label_meta(s)), warped, region, box, flipped)
        self.sample_counts["fill" if drawn_fill else "fill (no round trip)" if fill else "round trip"] += 1
        return out


def _flip(kp: np.ndarray, layout: KeypointLayout, size: int) -> np.ndarray:
    out = kp[:, layout.flip_index].copy()
    out[..., 0] = np.where(out[..., 2] > 0, size - 1 - out[..., 0], out[..., 0])
    return out


def refine_trainer(cfg: GANConfig, run_dir: "str | Path", resume: bool = False, source: "KeypointSource | None" = None,
                   progress: bool = True) -> GANTrainer:
    """The GAN trainer of ``train-gan --mode refine``: the refiner, trained on round trips of
    ``source`` (default: ``cfg.data``) prepared by :class:`RefineCropDataset`."""
    cfg.validate()
    if source is None:
        source = open_dataset(cfg.data, layout=cfg.layout or None, **data_options(cfg))
    if not any(crop_box(k, None, source.layout, RegionSpec(radius=cfg.region_radius), 0.0) is not None
               for k in source_annotations(source)):
        raise ConfigError(f"{cfg.data or 'the data'}: no person has a labelled arm (shoulder, elbow and wrist) and a "
                          "torso (neck or shoulders, and hips) to crop around: refine mode has nothing to learn from")
    plate_file = Path(run_dir) / BACKGROUND_FILE
    if resume and (Path(run_dir) / "config.yaml").exists():   # a run keeps the plate it was trained with
        saved = yaml.safe_load((Path(run_dir) / "config.yaml").read_text()) or {}
        before = str(saved.get("background", "") or "") if isinstance(saved, dict) else ""
        if before != (cfg.background or ""):
            raise ConfigError(f"{run_dir} was trained with --background {before or '(none)'}, not "
                              f"{cfg.background or '(none)'}: resume it with the same, or choose another --out")
        bank_before = str(saved.get("limb_bank", "") or "") if isinstance(saved, dict) else ""
        if bank_before != (cfg.limb_bank or ""):
            raise ConfigError(f"{run_dir} was trained with --limb-bank {bank_before or '(none)'}, not "
                              f"{cfg.limb_bank or '(none)'}: resume it with the same, or choose another --out")
        body_before = bool(saved.get("bank_body", True)) if isinstance(saved, dict) else True
        if cfg.limb_bank and body_before != bool(cfg.bank_body):
            raise ConfigError(f"{run_dir} was trained with --bank-body {str(body_before).lower()}: resume it with "
                              "the same, or choose another --out")
    plate = None
    if cfg.background and cfg.background != "none":
        plate = BackgroundPlate.load(plate_file) if resume and plate_file.exists() else \
            load_background(cfg.background, **data_options(cfg))
        first_last = {source[0].image.shape[:2], source[len(source) - 1].image.shape[:2]}
        if plate.size not in first_last:
            raise ConfigError(f"--background {cfg.background}: {plate.size[1]}x{plate.size[0]}, but the training "
                              f"images are {', '.join(f'{w}x{h}' for h, w in sorted(first_last))}; a background "
                              "plate serves frames of its own camera")
    bank = None
    if cfg.limb_bank:
        bank = load_limb_bank(cfg.limb_bank, source.layout, cfg.bank_body, **data_options(cfg))
        if bank.size not in first_last:
            raise ConfigError(f"--limb-bank {cfg.limb_bank}: frames of {bank.size[1]}x{bank.size[0]}, but the "
                              f"training images are {', '.join(f'{w}x{h}' for h, w in sorted(first_last))}; a limb "
                              "bank serves frames of its own camera")
    ds = RefineCropDataset(source, cfg.crop_size, cfg.crop_margin, cfg.fill_share, cfg.posemaps,
                           RegionSpec(radius=cfg.region_radius), seed=cfg.seed, flip=cfg.augment, background=plate,
                           bank=bank)
    trainer = GANTrainer(cfg, run_dir, source=source, resume=resume, progress=progress, dataset=ds)
    if plate is None:   # a new run leaves no plate of an earlier attempt in its folder
        for f in (plate_file, plate_file.with_suffix(".json")):
            f.unlink(missing_ok=True)
    elif not (resume and plate_file.exists()):
        plate.save(plate_file)
        log.info("background plate of %d frames (%.1f grey levels from the frames outside the person, %.0f%% of the "
                 "frame known) saved to %s", plate.frames, plate.residual, 100 * plate.known.mean(), plate_file)
    return trainer


