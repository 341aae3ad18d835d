"""The Python API: an image and its keypoints in, a new image with moved arms and its keypoints out.

- :class:`Augmenter` (``posesynth.Augmenter``): perturb each person's arms
  (:class:`~posesynth.augment.perturb.Perturber`) and render the image of the new pose
  (:func:`~posesynth.augment.renderers.make_renderer`: the limb warp, or a trained GAN run).
- :class:`PerturbPose` (``posesynth.PerturbPose``): the same as an albumentations transform, so it
  drops into an ``A.Compose`` pipeline (and so into mmpose's and Ultralytics' albumentations
  hooks) beside flips and crops.

Conventions: images ``(H, W, 3)`` uint8 RGB; keypoints ``(P, K, 3)`` ``[x, y, v]`` in pixels
of the image (pixel centres at integer coordinates; ``v`` COCO's 0 unlabelled, 1 occluded, 2
visible), ``K`` the layout's; masks ``(M, H, W)`` uint8 in {0, 1}.  Only elbows and wrists
move; every other keypoint, the visibilities, and every pixel outside the changed region are
returned as they came.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import albumentations as A
import numpy as np
import torch

from ..datasets.layouts import KeypointLayout, get_layout
from ..datasets.plate import background_option
from ..datasets.torch_dataset import image_to_tensor, tensor_to_image
from ..errors import ConfigError
from .perturb import PerturbConfig, Perturber, check_mode
from .renderers import Renderer, load_limb_bank, make_renderer

__all__ = ["Augmenter", "Augmented", "PerturbPose"]


class Augmented(NamedTuple):
    """What :class:`Augmenter` returns: ``image`` ``(H, W, 3)`` uint8, ``keypoints`` ``(P, K, 3)``
    float32 (``(K, 3)`` when one person was given as ``(K, 3)``), ``masks`` ``(M, H, W)`` uint8."""

    image: np.ndarray
    keypoints: np.ndarray
    masks: np.ndarray


class Augmenter:
    """Render an image of the same people with their arms moved, with labels that match.

    Args:
        layout: the keypoints' layout (``"coco17"``, ``"driver9"``, a YAML file or a
            :class:`~posesynth.datasets.layouts.KeypointLayout`).
        renderer: ``"warp"`` (no training), ``"gan"`` (needs ``gan``), or a
            :class:`~posesynth.augment.renderers.Renderer`.
        perturb: ``arms-angle``, ``arms-slight``, ``arms-high``, ``poses:FILE`` or
            ``learned:RUN`` (see :mod:`posesynth.augment.perturb`).
        fraction: the share of calls that render a new pose; the others return the input
            unchanged (copies), as the training mixer's real slots.
        seed: seeds the draws (which calls render, and the new arm angles), so a sequence of
            calls is reproducible (the warp's own result depends only on its inputs); a call's
            ``rng`` overrides it.
        gan: a ``train-gan`` run folder for ``renderer="gan"``.
        device: where the renderer runs (``"cpu"``, ``"cuda"``).
        min_torso: people whose torso is smaller (pixels) keep their pose.
        background: a static camera's background plate for the warp (and a refiner's warp): a
            clip of the camera (dataset folder or file), a PNG of the empty scene, or a
            :class:`~posesynth.datasets.plate.BackgroundPlate` (``None``: inpainting, but a refine
            run's own plate; ``"none"`` or ``False``: no plate at all).
        limb_bank: frames of the same person and camera whose arms the warp (and a refiner's
            warp) moves where they lie nearer the new pose than the source's own: a dataset
            folder or file, or a :class:`~posesynth.augment.renderers.LimbBank` (``None``: none;
            ``LimbBank(..., body=False)`` or ``load_limb_bank(path, body=False)``: it moves arms
            but does not fill the body an arm hid).

    Example::

        aug = posesynth.Augmenter("coco17", renderer="warp", perturb="arms-angle", seed=0)
        image2, keypoints2, masks2 = aug(image, keypoints)     # (H, W, 3), (P, 17, 3), (0, H, W)
    """

    def __init__(self, layout: "str | KeypointLayout", renderer: "str | Renderer" = "warp",
                 perturb: str = "arms-angle", fraction: float = 1.0, seed: "int | None" = 0, gan: str = "",
                 device: str = "cpu", min_torso: float = 20.0, background: Any = None, limb_bank: Any = None) -> None:
        self.layout = get_layout(layout)
        if not 0.0 <= fraction <= 1.0:
            raise ConfigError(f"fraction must be in [0, 1], not {fraction}")
        check_mode(perturb)
        self.perturber = Perturber(PerturbConfig(perturb, min_torso), self.layout, device=device)
        if isinstance(background, (str, Path)):
            background = background_option(str(background))
        limb_bank = limb_bank or None
        for name, v in (("background", background), ("limb_bank", limb_bank)):
            if v is not None and (isinstance(renderer, Renderer) or renderer == "gan"):
                raise ConfigError(f"{name} is for the warp and refine renderers made here by name")
        if isinstance(limb_bank, (str, Path)):
            limb_bank = load_limb_bank(str(limb_bank), self.layout)
        self.renderer = renderer if isinstance(renderer, Renderer) else make_renderer(renderer, self.layout, gan,
                                                                                      device, background, limb_bank)
        self.fraction = float(fraction)
        self.device = torch.device(device)
        self.rng = np.random.default_rng(seed)

    def _check(self, image: np.ndarray, keypoints: np.ndarray, masks: "np.ndarray | None"
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
        img = np.asarray(image)
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ConfigError(f"image must be (H, W, 3) uint8 RGB, not {img.shape} {img.dtype}")
        h, w = img.shape[:2]
        kp = np.asarray(keypoints, np.float32)
        single = kp.ndim == 2
        kp = kp[None] if single else kp
        k = self.layout.num_keypoints
        if kp.ndim != 3 or kp.shape[1:] != (k, 3):
            raise ConfigError(f"keypoints must be (P, {k}, 3) [x, y, v] for layout '{self.layout.name}', not "
                              f"{np.shape(keypoints)}")
        if masks is None:
            m = np.zeros((self.layout.num_masks, h, w), np.uint8)
        else:
            m = np.asarray(masks)
            m = m[None] if m.ndim == 2 else m
            if m.ndim != 3 or m.shape[1:] != (h, w):
                raise ConfigError(f"masks must be (M, {h}, {w}) like the image, not {np.shape(masks)}")
            if getattr(self.renderer, "spec", None) is not None and len(m) != self.layout.num_masks:
                raise ConfigError(f"the GAN renderer needs layout '{self.layout.name}''s {self.layout.num_masks} "
                                  f"masks, got {len(m)}")
            m = (m > 0).astype(np.uint8)
        return img, kp, m, single

    @torch.no_grad()
    def __call__(self, image: np.ndarray, keypoints: np.ndarray, masks: "np.ndarray | None" = None,
                 rng: "np.random.Generator | None" = None, file_name: str = "") -> Augmented:
        """A new image, keypoints and masks (see the class docstring).

        Args:
            image: ``(H, W, 3)`` uint8 RGB.
            keypoints: ``(P, K, 3)`` (or one person ``(K, 3)``) ``[x, y, v]`` in pixels.
            masks: ``(M, H, W)`` (or ``(H, W)``), non-zero inside; default: none (zeros for the
                layout's masks).
            rng: the draws for this call (default: the augmenter's own, seeded by ``seed``).
                With ``fraction < 1`` one draw decides whether to render; the rest (all of
                them with ``fraction=1``) go to the perturbation, so the new keypoints are
                ``Perturber(...)(keypoints, (H, W), rng)``'s.
            file_name: the image's file name, for ``perturb="poses:FILE"``.

        Returns:
            :class:`Augmented` ``(image, keypoints, masks)``: the moved elbows and wrists are
            exactly where the new image draws them; other keypoints and the pixels outside the
            changed region are the input's.
        """
        img, kp, m, single = self._check(image, keypoints, masks)
        rng = self.rng if rng is None else rng
        render = len(kp) > 0 and (self.fraction >= 1.0 or rng.random() < self.fraction)
        if not render:
            return Augmented(img.copy(), (kp[0] if single else kp).copy(), m.copy())
        new = self.perturber(kp, img.shape[:2], rng, file_name).astype(np.float32)
        x = image_to_tensor(img)[None].to(self.device)
        mt = torch.from_numpy(m[None]).float().to(self.device)
        rd = self.renderer(x, mt, kp[None], new[None])
        out = tensor_to_image(rd.images)[0]
        region = rd.region[0, 0].float().cpu().numpy() > 0
        out = np.where(region[..., None], out, img)               # outside the region: the input, bit for bit
        new_masks = (rd.masks[0] > 0.5).to(torch.uint8).cpu().numpy()
        if rd.keypoints is not None:   # the pose drawn: an arm the renderer would not move keeps its pose
            new = np.asarray(rd.keypoints[0][: len(new)], np.float32)
        return Augmented(out, new[0] if single else new, new_masks)


class PerturbPose(A.DualTransform):
    """:class:`Augmenter` as an albumentations transform: it moves the arms, renders the image,
    and moves the keypoints (and the masks) with them, so any later transform (a flip, a crop)
    sees consistent labels.

    Keypoints: the pipeline's ``keypoints`` hold ``P * K`` points, person by person in the
    layout's order (point ``p * K + k`` is keypoint ``k`` of person ``p``), in any format
    albumentations reads (``A.KeypointParams(format="xy", remove_invisible=False)`` keeps the
    count fixed).  A point counts as labelled when its coordinates are finite and inside the
    image; put unlabelled points outside it (e.g. ``-1, -1``) or at NaN: they are left as they
    are.  Masks (``mask`` or ``masks``) get the renderer's masks; bounding boxes are passed
    through unchanged.  Draws come from the transform's random generator, so
    ``A.Compose(..., seed=S)`` makes a pipeline reproducible.

    Args:
        layout, renderer, perturb, gan, device, min_torso: as for :class:`Augmenter`.
        p: the probability of applying it (albumentations' own; ``Augmenter``'s ``fraction``).
    """

    def __init__(self, layout: "str | KeypointLayout", renderer: "str | Renderer" = "warp",
                 perturb: str = "arms-angle", gan: str = "", device: str = "cpu", min_torso: float = 20.0,
                 p: float = 1.0) -> None:
        super().__init__(p=p)
        self.layout, self.renderer, self.perturb, self.gan, self.device, self.min_torso = (
            layout, renderer, perturb, gan, device, min_torso)
        self.augmenter = Augmenter(layout, renderer, perturb, 1.0, None, gan, device, min_torso)

    @property
    def targets_as_params(self) -> list[str]:
        return ["image", "keypoints"]

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        image = data["image"]
        pts = np.asarray(data["keypoints"], np.float64)        # albumentations' own array: (N, 2+), x and y first
        k = self.augmenter.layout.num_keypoints
        if len(pts) % k:
            raise ValueError(f"PerturbPose: {len(pts)} keypoints is not a whole number of people of "
                             f"{k} (layout '{self.augmenter.layout.name}'); give P * {k} points, person by person")
        h, w = image.shape[:2]
        xy = pts[:, :2].reshape(-1, k, 2)
        lab = np.isfinite(xy).all(-1) & (xy[..., 0] >= -0.5) & (xy[..., 1] >= -0.5) & \
            (xy[..., 0] <= w - 0.5) & (xy[..., 1] <= h - 0.5)
        kp = np.concatenate([np.where(lab[..., None], xy, 0.0), np.where(lab, 2.0, 0.0)[..., None]], -1)
        masks = data.get("masks")
        single_mask = masks is None and data.get("mask") is not None
        if single_mask:
            masks = np.asarray(data["mask"])[None]
        rng = np.random.default_rng(int(self.random_generator.integers(2 ** 63)))
        res = self.augmenter(np.asarray(image), kp.astype(np.float32),
                             None if masks is None else np.asarray(masks), rng=rng)
        new_xy = np.where(lab[..., None], res.keypoints[..., :2], xy).reshape(-1, 2)
        return {"rendered": res.image, "new_xy": new_xy, "new_masks": res.masks, "single_mask": single_mask}

    def apply(self, img: np.ndarray, rendered: "np.ndarray | None" = None, **params: Any) -> np.ndarray:
        return img if rendered is None else rendered

    def apply_to_keypoints(self, keypoints: np.ndarray, new_xy: "np.ndarray | None" = None, **params: Any
                           ) -> np.ndarray:
        if new_xy is None or not len(keypoints):
            return keypoints
        out = np.array(keypoints, copy=True)
        out[:, :2] = new_xy
        return out

    def apply_to_bboxes(self, bboxes: np.ndarray, **params: Any) -> np.ndarray:
        return bboxes

    def apply_to_mask(self, mask: np.ndarray, new_masks: "np.ndarray | None" = None,
                      single_mask: bool = False, **params: Any) -> np.ndarray:
        if new_masks is None or not single_mask:
            return mask
        return new_masks[0].astype(mask.dtype) * (mask.max() if mask.max() > 1 else 1)

    def apply_to_masks(self, masks: Any, new_masks: "np.ndarray | None" = None, **params: Any) -> Any:
        if new_masks is None:
            return masks
        scale = [(np.asarray(m).max() if np.asarray(m).max() > 1 else 1) for m in masks]
        out = [nm.astype(np.asarray(m).dtype) * s for nm, m, s in zip(new_masks, masks, scale)]
        return np.stack(out) if isinstance(masks, np.ndarray) else out

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("layout", "renderer", "perturb", "gan", "device", "min_torso")
