"""Renderers: a source image and a new pose in, an image of the person in that pose out.

One interface (:class:`Renderer`) serves the mixer, the experiment, ``train-posenet``,
``generate``, ``render`` and ``render-quality``:

``renderer(images, masks, old_kp, new_kp) -> Rendered``

- ``images``: ``(B, 3, H, W)`` float in [-1, 1]; ``masks``: ``(B, M, H, W)`` in [0, 1];
- ``old_kp``, ``new_kp``: ``(B, P, K, 3)`` float32 NumPy, ``[x, y, v]`` in pixels of ``images``;
- :class:`Rendered`: the new images ``(B, 3, H, W)`` in [-1, 1] on the images' device, the
  region ``(B, 1, H, W)`` in [0, 1] that may differ from the source (every pixel outside it
  is the source's), and the mask labels that go with the new images.

Renderers:

- :class:`WarpRenderer` (``warp``, no training): each moved arm is cut from its background
  (GrabCut seeded by the skeleton), its upper arm, forearm and hand are moved rigidly to the
  new bones (rotation about the proximal joint, scale along the bone, one ``cv2.warpAffine``
  each), the area the old arm covered is filled (OpenCV Telea inpainting, or an inpainting
  generator), and the moved parts are pasted with a soft edge.
- :class:`GANRenderer` (``gan``): a trained SPADE generator, in the run's mode.  ``full``
  draws the whole image from the new pose maps (the original method; the region is the whole
  image).  ``inpaint`` removes the region around the old and new arms, draws it from the new
  pose maps and the rest of the image, and composites: ``out = M * G + (1 - M) * image``.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..datasets.geometry import RegionSpec, arm_chains, limb_region, moved_arms, torso_size
from ..datasets.layouts import KeypointLayout
from ..datasets.posemaps import PoseMapSpec, render_pose_maps_torch
from ..datasets.torch_dataset import tensor_to_image
from ..errors import ConfigError

__all__ = ["Rendered", "Renderer", "WarpRenderer", "GANRenderer", "change_region", "make_renderer", "RENDERERS"]

RENDERERS = ("warp", "gan")


@dataclass
class Rendered:
    images: torch.Tensor          # (B, 3, H, W) in [-1, 1]
    region: torch.Tensor          # (B, 1, H, W) in [0, 1]: where the image may differ from the source
    masks: torch.Tensor           # (B, M, H, W) mask labels of the new images


def change_region(old_kp: np.ndarray, new_kp: np.ndarray, layout: KeypointLayout, size: tuple[int, int],
                  spec: RegionSpec = RegionSpec(), device: "str | torch.device" = "cpu") -> torch.Tensor:
    """M: the soft union of capsules around every moved bone (upper arm, forearm, hand beyond
    the wrist) at its old and its new position, ``(B, 1, H, W)`` in [0, 1] (see
    :func:`posesynth.datasets.geometry.limb_region`)."""
    return limb_region(old_kp, new_kp, layout, size, spec, device)


class Renderer:
    """Base class; see the module docstring for the call."""

    name = "renderer"

    def __call__(self, images: torch.Tensor, masks: torch.Tensor, old_kp: np.ndarray, new_kp: np.ndarray) -> Rendered:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"renderer": self.name}


# ---- warp -----------------------------------------------------------------------------------
def _seg_dist(xs: np.ndarray, ys: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = b - a
    t = np.clip(((xs - a[0]) * d[0] + (ys - a[1]) * d[1]) / max(float(d @ d), 1e-9), 0, 1)
    return np.hypot(xs - a[0] - t * d[0], ys - a[1] - t * d[1])


def _telea(img: np.ndarray, hole: np.ndarray, radius: float, max_radius: float = 20.0) -> np.ndarray:
    """OpenCV Telea inpainting of ``hole`` (uint8 {0, 1}), done at a scale where the arm
    capsule radius is at most ``max_radius`` px (the fill is smooth, so nothing is lost) and
    pasted into the full-resolution image inside the hole only."""
    f = min(1.0, max_radius / max(radius, 1e-6))
    if f >= 1.0:
        return cv2.inpaint(img, hole, max(int(round(radius * 0.3)), 3), cv2.INPAINT_TELEA)
    small = cv2.resize(img, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
    sh = cv2.resize(hole, (small.shape[1], small.shape[0]), interpolation=cv2.INTER_AREA)
    sh = (sh > 0).astype(np.uint8)
    filled = cv2.inpaint(small, sh, max(int(round(max_radius * 0.3)), 3), cv2.INPAINT_TELEA)
    up = cv2.resize(filled, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_LINEAR)
    return np.where(hole[..., None] > 0, up, img)


def _content_seed(*arrays: np.ndarray) -> int:
    """A 31-bit seed from the bytes (and shapes) of ``arrays``: CRC-32, deterministic across
    processes and platforms."""
    crc = 0
    for a in arrays:
        a = np.ascontiguousarray(a)
        crc = zlib.crc32(np.asarray(a.shape, np.int64).tobytes(), crc)
        crc = zlib.crc32(a.view(np.uint8).reshape(-1), crc) if a.size else crc
    return int(crc & 0x7FFFFFFF)


def _band_halfwidths(fg: np.ndarray, a: np.ndarray, b: np.ndarray, r: float, samples: int = 15
                     ) -> "tuple[float, float] | None":
    """Median foreground run (px) from the bone axis ``a -> b`` on its left and right sides,
    sampled across at ``samples`` positions between 15% and 85% of the bone (``None`` for a
    bone shorter than 2 px).  Runs stop at the first background pixel or at ``r``."""
    d = b - a
    length = float(np.linalg.norm(d))
    if length < 2:
        return None
    u = d / length
    n = np.array([-u[1], u[0]])
    t = np.linspace(0.15, 0.85, samples) * length
    k = np.arange(0, int(np.ceil(r)) + 1, dtype=np.float64)
    h, w = fg.shape
    out = []
    for sign in (1.0, -1.0):
        pts = a + t[:, None, None] * u + sign * k[None, :, None] * n        # (S, R, 2)
        xi, yi = np.round(pts[..., 0]).astype(int), np.round(pts[..., 1]).astype(int)
        inside = (xi >= 0) & (yi >= 0) & (xi < w) & (yi < h)
        val = np.where(inside, fg[np.clip(yi, 0, h - 1), np.clip(xi, 0, w - 1)], False)
        run = np.where(val.all(1), len(k) - 1, np.argmin(val, 1))           # first background step
        out.append(float(np.median(run)))
    return out[0], out[1]


def _band(xs: np.ndarray, ys: np.ndarray, a: np.ndarray, b: np.ndarray, hw: tuple[float, float],
          grow: float = 1.2, margin: float = 1.0) -> np.ndarray:
    """Pixels within the bone's band: along in [-h, L + h] and across within the side's
    half-width (x ``grow`` + ``margin``)."""
    d = b - a
    length = max(float(np.linalg.norm(d)), 1e-6)
    u = d / length
    px, py = xs - a[0], ys - a[1]
    along = px * u[0] + py * u[1]
    across = -px * u[1] + py * u[0]          # positive on the side of n = (-u_y, u_x)
    left, right = hw[0] * grow + margin, hw[1] * grow + margin
    cap = max(left, right)
    return (along >= -cap) & (along <= length + cap) & (across <= left) & (across >= -right)


def _bone_affine(a: np.ndarray, b: np.ndarray, a2: np.ndarray, b2: np.ndarray) -> np.ndarray:
    """2x3 matrix moving the bone ``a -> b`` onto ``a2 -> b2``: rotation, scale along the bone
    only (the limb keeps its width), translation."""
    d, d2 = b - a, b2 - a2
    l1, l2 = max(np.linalg.norm(d), 1e-6), max(np.linalg.norm(d2), 1e-6)
    u, u2 = d / l1, d2 / l2
    n, n2 = np.array([-u[1], u[0]]), np.array([-u2[1], u2[0]])
    lin = np.outer(u2, u) * (l2 / l1) + np.outer(n2, n)       # u -> u2 * scale, n -> n2
    return np.concatenate([lin, (a2 - lin @ a)[:, None]], 1)


@dataclass
class _Arm:
    s: np.ndarray
    e: np.ndarray
    w: np.ndarray
    s2: np.ndarray
    e2: np.ndarray
    w2: np.ndarray
    radius: float


class WarpRenderer(Renderer):
    """Training-free limb warp (see the module docstring).

    Args:
        layout: keypoint layout of the poses.
        region: capsule radii (torso-relative) for the foreground search and the region M.
        fill: ``"telea"`` (OpenCV inpainting) or a callable ``fill(images uint8 (H, W, 3), hole
            (H, W) uint8, new_kp (P, K, 3)) -> (H, W, 3) uint8`` (e.g. an inpainting generator).
        grabcut_iters: GrabCut iterations per arm (0: the whole capsule is the limb).
    """

    name = "warp"

    def __init__(self, layout: KeypointLayout, region: RegionSpec = RegionSpec(), fill: Any = "telea",
                 grabcut_iters: int = 3, feather_px: float = 1.0, fg_frac: float = 0.6, axis_frac: float = 0.3) -> None:
        if not arm_chains(layout):
            raise ConfigError(f"layout '{layout.name}' names no arms (right/left shoulder, elbow, wrist): "
                              "the warp renderer has nothing to move")
        self.layout, self.region, self.fill = layout, region, fill
        self.grabcut_iters, self.feather_px = grabcut_iters, feather_px
        self.fg_frac, self.axis_frac = fg_frac, axis_frac
        self.last_limb: "np.ndarray | None" = None   # (B, H, W) alpha of the pasted limbs (for tests, reports)

    def describe(self) -> dict[str, Any]:
        return {"renderer": "warp", "fill": self.fill if isinstance(self.fill, str) else "generator",
                "grabcut_iters": self.grabcut_iters}

    # -- one image -------------------------------------------------------------------------
    def _arms(self, old: np.ndarray, new: np.ndarray) -> list[_Arm]:
        arms = []
        for p in range(old.shape[0]):
            ts = torso_size(old[p], self.layout)
            if not np.isfinite(ts):
                continue
            r = (self.region.radius + self.region.dilate) * ts
            for s, e, w in moved_arms(old[p], new[p], self.layout):
                arms.append(_Arm(*(old[p, j, :2].astype(np.float64) for j in (s, e, w)),
                                 *(new[p, j, :2].astype(np.float64) for j in (s, e, w)), float(r)))
        return arms

    def limb_mask(self, img: np.ndarray, arm: _Arm, max_radius: float = 20.0) -> np.ndarray:
        """``(H, W)`` bool: the arm's own pixels (upper arm, forearm, hand), cut from their
        background by GrabCut seeded with the skeleton.  Large arms are segmented at a scale
        where the capsule radius is ``max_radius`` px and the mask is resized back."""
        if arm.radius > max_radius:
            f = max_radius / arm.radius
            small = cv2.resize(img, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
            fy, fx = small.shape[0] / img.shape[0], small.shape[1] / img.shape[1]
            sc = np.array([fx, fy])
            a2 = _Arm(*((v + 0.5) * sc - 0.5 for v in (arm.s, arm.e, arm.w, arm.s2, arm.e2, arm.w2)), arm.radius * f)
            m = self.limb_mask(small, a2, max_radius).astype(np.float32)
            return cv2.resize(m, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_LINEAR) > 0.5
        h, w = img.shape[:2]
        hand = arm.w + (arm.w - arm.e) * self.region.hand
        pts = np.stack([arm.s, arm.e, arm.w, hand])
        r = arm.radius
        x0, y0 = np.floor(pts.min(0) - 2 * r).astype(int)
        x1, y1 = np.ceil(pts.max(0) + 2 * r).astype(int) + 1
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
        if x1 - x0 < 4 or y1 - y0 < 4:
            return np.zeros((h, w), bool)
        ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float64)
        dist = np.minimum.reduce([_seg_dist(xs, ys, arm.s, arm.e), _seg_dist(xs, ys, arm.e, arm.w),
                                  _seg_dist(xs, ys, arm.w, hand)])
        capsule = dist <= r
        out = np.zeros((h, w), bool)
        if self.grabcut_iters <= 0:
            out[y0:y1, x0:x1] = capsule
            return out
        # seeds: the capsule is about 2.5 arm half-widths wide, so its inner part is arm and
        # its outer part mostly background; outside it everything is background
        gc = np.full(dist.shape, cv2.GC_BGD, np.uint8)
        gc[capsule] = cv2.GC_PR_BGD
        gc[dist <= self.fg_frac * r] = cv2.GC_PR_FGD
        gc[dist <= max(self.axis_frac * r, 1.0)] = cv2.GC_FGD   # the bone axis is the limb
        roi = np.ascontiguousarray(img[y0:y1, x0:x1])
        if (gc == cv2.GC_BGD).sum() + (gc == cv2.GC_PR_BGD).sum() < 8:
            out[y0:y1, x0:x1] = capsule
            return out
        # GrabCut starts its colour models with k-means, which draws from OpenCV's RNG: seed it
        # from this call's own inputs (the pixels and the seeds, i.e. the arm's geometry), so a
        # render depends on (image, poses) alone, never on what the process did before.
        # cv2.setRNGSeed sets the calling thread's RNG (thread-local in OpenCV), and k-means
        # draws in the calling thread.
        cv2.setRNGSeed(_content_seed(roi, gc))
        try:
            cv2.grabCut(roi, gc, None, np.zeros((1, 65)), np.zeros((1, 65)), self.grabcut_iters,
                        cv2.GC_INIT_WITH_MASK)
        except cv2.error:  # degenerate colour models: fall back to the capsule
            out[y0:y1, x0:x1] = capsule
            return out
        fg = ((gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD)) & capsule
        # a limb is a band of nearly constant width along its bone: estimate each bone's
        # half-width on either side as the median (over positions along the bone) of the
        # foreground run from the axis, so a leak into a same-coloured torso or background
        # over part of the bone does not travel with the arm
        band = np.zeros_like(fg)
        widths = []
        for a, b in ((arm.s, arm.e), (arm.e, arm.w), (arm.w, hand)):
            hw = _band_halfwidths(fg, a - (x0, y0), b - (x0, y0), r)
            if hw is None:  # too short to measure: the forearm's width
                hw = widths[-1] if widths else (0.5 * r, 0.5 * r)
            widths.append(hw)
            band |= _band(xs - x0, ys - y0, a - (x0, y0), b - (x0, y0), hw)
        fg = (fg & band) | (band & (dist <= max(self.axis_frac * r, 1.0)))
        n, lab = cv2.connectedComponents(fg.astype(np.uint8), connectivity=8)
        if n > 2:  # keep what is connected to the bone axis
            axis = lab[dist <= max(self.axis_frac * r, 1.0)]
            fg = np.isin(lab, np.unique(axis[axis > 0]))
        out[y0:y1, x0:x1] = fg
        return out

    def render_one(self, img: np.ndarray, old: np.ndarray, new: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``img`` ``(H, W, 3)`` uint8 and one image's ``(P, K, 3)`` old and new keypoints ->
        (new image uint8, pasted-limb alpha ``(H, W)`` float32, filled hole ``(H, W)`` bool)."""
        H, W = img.shape[:2]
        arms = self._arms(old, new)
        if not arms:
            return img.copy(), np.zeros((H, W), np.float32), np.zeros((H, W), bool)
        # everything happens inside the box around the old and new arms (outside it nothing
        # changes), so the cost follows the arms' size, not the image's
        pts = np.concatenate([np.stack([a.s, a.e, a.w, a.w + (a.w - a.e) * self.region.hand, a.e2, a.w2,
                                        a.w2 + (a.w2 - a.e2) * self.region.hand]) for a in arms])
        pad = 2.5 * max(a.radius for a in arms)
        x0, y0 = np.maximum(np.floor(pts.min(0) - pad).astype(int), 0)
        x1, y1 = np.minimum(np.ceil(pts.max(0) + pad).astype(int) + 1, (W, H))
        o = np.array([x0, y0], np.float64)
        arms = [_Arm(a.s - o, a.e - o, a.w - o, a.s2 - o, a.e2 - o, a.w2 - o, a.radius) for a in arms]
        full = img
        img = np.ascontiguousarray(img[y0:y1, x0:x1])
        new = new.copy()
        new[..., :2] -= o.astype(np.float32)
        h, w = img.shape[:2]
        alpha_all = np.zeros((h, w), np.float32)
        masks = [self.limb_mask(img, a) for a in arms]
        hole = np.zeros((h, w), np.uint8)
        for m, a in zip(masks, arms):
            k = max(int(round(0.15 * a.radius)) * 2 + 1, 3)
            hole |= cv2.dilate(m.astype(np.uint8), np.ones((k, k), np.uint8))
        if isinstance(self.fill, str):
            base = _telea(img, hole, float(np.mean([a.radius for a in arms])))
        else:
            base = self.fill(img, hole, new)
        out = base.astype(np.float32)
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
        for m, a in zip(masks, arms):
            hand = a.w + (a.w - a.e) * self.region.hand
            d_up = _seg_dist(xs, ys, a.s, a.e)
            d_lo = np.minimum(_seg_dist(xs, ys, a.e, a.w), _seg_dist(xs, ys, a.w, hand))
            d_el = np.hypot(xs - a.e[0], ys - a.e[1])
            parts = [  # pasted in this order: elbow cap under the bones, forearm on top
                (m & (d_el <= 0.8 * a.radius), np.array([[1, 0, a.e2[0] - a.e[0]], [0, 1, a.e2[1] - a.e[1]]])),
                (m & (d_up <= d_lo), _bone_affine(a.s, a.e, a.s2, a.e2)),
                (m & (d_lo < d_up), _bone_affine(a.e, a.w, a.e2, a.w2)),
            ]
            for part, mat in parts:
                if not part.any():
                    continue
                src = cv2.warpAffine(img, mat, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
                al = cv2.warpAffine(part.astype(np.float32), mat, (w, h), flags=cv2.INTER_LINEAR,
                                    borderMode=cv2.BORDER_CONSTANT, borderValue=0)
                if self.feather_px > 0:
                    al = cv2.GaussianBlur(al, (0, 0), self.feather_px) * 0.5 + al * 0.5
                al = np.clip(al, 0, 1)
                out = al[..., None] * src + (1 - al[..., None]) * out
                alpha_all = np.maximum(alpha_all, al)
        res = full.copy()
        res[y0:y1, x0:x1] = np.clip(out.round(), 0, 255).astype(np.uint8)
        alpha_f = np.zeros((H, W), np.float32)
        alpha_f[y0:y1, x0:x1] = alpha_all
        hole_f = np.zeros((H, W), bool)
        hole_f[y0:y1, x0:x1] = hole > 0
        return res, alpha_f, hole_f

    def __call__(self, images: torch.Tensor, masks: torch.Tensor, old_kp: np.ndarray, new_kp: np.ndarray) -> Rendered:
        dev = images.device
        imgs = tensor_to_image(images)
        outs, alphas, _ = zip(*(self.render_one(im, o, n) for im, o, n in zip(imgs, old_kp, new_kp)))
        new = torch.from_numpy(np.stack(outs)).to(dev).permute(0, 3, 1, 2).float().div(127.5).sub(1)
        # M, from the keypoints alone (the capsules around the moved bones, old and new); the
        # warp's changes are clamped to it: the soft edge of a pasted part or a hole dilated at a
        # capsule's rim can reach a pixel or so beyond, and outside M every pixel is the source's
        region = change_region(old_kp, new_kp, self.layout, tuple(images.shape[-2:]), self.region, dev)
        inside = region > 0
        new = torch.where(inside, new, images.float())
        self.last_limb = np.stack(alphas) * inside[:, 0].cpu().numpy()
        # the seatbelt (or any mask) is hidden under the pasted limb
        m = masks.float() * (1 - torch.from_numpy(self.last_limb).to(dev)[:, None].clamp(0, 1).round())
        return Rendered(new.to(images.dtype), region, m)


# ---- GAN ------------------------------------------------------------------------------------
class GANRenderer(Renderer):
    """A trained SPADE generator as a renderer (its mode comes from the run).

    Args:
        generator: a :class:`~posesynth.spade.generator.SPADEGenerator` (eval, frozen here).
        mode: ``"full"`` or ``"inpaint"``.
        layout, spec: the pose-map layout and settings the generator was trained with.
        size: the generator's ``(H, W)``; batches of another size are resized to it and back
            (in inpaint mode the composite is made at the batch's own size).
        device: where the generator runs.
    """

    name = "gan"

    def __init__(self, generator: torch.nn.Module, mode: str, layout: KeypointLayout, spec: PoseMapSpec,
                 size: tuple[int, int], device: "str | torch.device" = "cpu", region: RegionSpec = RegionSpec(),
                 run: str = "", dtype: torch.dtype = torch.float32) -> None:
        if mode not in ("full", "inpaint"):
            raise ConfigError(f"GAN mode must be full or inpaint, not {mode!r}")
        self.device = torch.device(device)
        self.G = generator.to(self.device).eval().requires_grad_(False)
        self.mode, self.layout, self.spec, self.size, self.region = mode, layout, spec, tuple(size), region
        self.run = run
        self.dtype = dtype          # the generator's input dtype (fp16/bf16 for a half-precision generator)
        self.name = f"gan-{mode}"

    def describe(self) -> dict[str, Any]:
        return {"renderer": self.name, "gan": self.run, "size": list(self.size)}

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor, masks: torch.Tensor, old_kp: np.ndarray, new_kp: np.ndarray) -> Rendered:
        dev = images.device
        size = tuple(images.shape[-2:])
        gs = self.size
        kp = new_kp.copy()
        if gs != size:
            kp[..., 0] = (kp[..., 0] + 0.5) * gs[1] / size[1] - 0.5
            kp[..., 1] = (kp[..., 1] + 0.5) * gs[0] / size[0] - 0.5
        kpt = torch.from_numpy(np.ascontiguousarray(kp)).to(self.device)
        maps = render_pose_maps_torch(kpt, self.layout, gs, gs, masks.to(self.device), self.spec)
        if self.mode == "full":
            fake = self.G(maps.to(self.dtype).contiguous(memory_format=torch.channels_last)).float()
            if gs != size:
                fake = F.interpolate(fake, size=size, mode="bilinear", align_corners=False)
            region = torch.ones(images.shape[0], 1, *size, device=dev)
            return Rendered(fake.to(dev, images.dtype), region, masks.clone())
        region = change_region(old_kp, new_kp, self.layout, size, self.region, dev)
        img_g = images.float().to(self.device)
        reg_g = region.to(self.device)
        if gs != size:
            img_g = F.interpolate(img_g, size=gs, mode="bilinear", align_corners=False)
            reg_g = F.interpolate(reg_g, size=gs, mode="bilinear", align_corners=False)
        fake = inpaint_forward(self.G, maps, img_g, reg_g, self.dtype)
        if gs != size:
            fake = F.interpolate(fake, size=size, mode="bilinear", align_corners=False)
        fake = fake.to(dev)
        out = region * fake + (1 - region) * images.float()
        out = torch.where(region > 0, out, images.float())
        return Rendered(out.to(images.dtype), region, masks.clone())


def inpaint_input(maps: torch.Tensor, images: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """The inpainting generator's conditioning: pose maps, the image with the region removed
    (set to 0, mid-grey) and the hole mask: ``(B, C + 4, H, W)``."""
    hole = (region > 0).to(images.dtype)
    return torch.cat([maps.to(images.dtype), images * (1 - hole), hole], 1)


def inpaint_forward(G: torch.nn.Module, maps: torch.Tensor, images: torch.Tensor, region: torch.Tensor,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The raw generator output (before compositing) for inpainting."""
    x = inpaint_input(maps, images, region)
    return G(x.to(dtype).contiguous(memory_format=torch.channels_last)).float()


def make_renderer(name: str, layout: KeypointLayout, gan: str = "", device: str = "cpu", fill: str = "telea",
                  spec: "PoseMapSpec | None" = None) -> Renderer:
    """A renderer by name: ``warp`` (``fill`` ``telea``, or ``gan`` to fill with the inpainting
    generator of ``gan``) or ``gan`` (the run ``gan``, in its own mode)."""
    if name == "warp":
        if fill == "gan":
            if not gan:
                raise ConfigError("--fill gan needs --gan RUN (an inpainting GAN run)")
            gr = load_gan_renderer(gan, layout, device)
            if gr.mode != "inpaint":
                raise ConfigError(f"{gan} is a full-image GAN; filling the warp's hole needs an inpainting run")
            return WarpRenderer(layout, fill=_GeneratorFill(gr))
        return WarpRenderer(layout)
    if name == "gan":
        if not gan:
            raise ConfigError("--renderer gan needs --gan RUN (a train-gan run folder)")
        return load_gan_renderer(gan, layout, device)
    raise ConfigError(f"renderer must be one of {', '.join(RENDERERS)}, not {name!r}")


def load_gan_renderer(run: str, layout: KeypointLayout, device: str = "cpu") -> GANRenderer:
    from ..spade.load import check_compatible, load_generator

    gen, gan_layout, meta = load_generator(run, device)
    check_compatible(gan_layout, layout, run, "the data")
    return GANRenderer(gen, meta.get("mode", "full"), gan_layout, PoseMapSpec.from_dict(meta["posemaps"]),
                       tuple(meta["generator"]["size"]), device, region=RegionSpec.from_meta(meta), run=str(run))


class _GeneratorFill:
    """The warp renderer's hole filled by an inpainting generator (pose maps of the new pose)."""

    def __init__(self, gr: GANRenderer) -> None:
        self.gr = gr

    @torch.inference_mode()
    def __call__(self, img: np.ndarray, hole: np.ndarray, new_kp: np.ndarray) -> np.ndarray:
        gr = self.gr
        h, w = img.shape[:2]
        x = torch.from_numpy(img).permute(2, 0, 1)[None].float().div(127.5).sub(1).to(gr.device)
        reg = torch.from_numpy(hole.astype(np.float32))[None, None].to(gr.device)
        kp = new_kp.copy()[None]
        gs = gr.size
        kp[..., 0] = (kp[..., 0] + 0.5) * gs[1] / w - 0.5
        kp[..., 1] = (kp[..., 1] + 0.5) * gs[0] / h - 0.5
        maps = render_pose_maps_torch(torch.from_numpy(kp).to(gr.device), gr.layout, gs, gs, None, gr.spec)
        xs, rs = F.interpolate(x, size=gs, mode="bilinear", align_corners=False), F.interpolate(reg, size=gs)
        fake = F.interpolate(inpaint_forward(gr.G, maps, xs, rs, gr.dtype), size=(h, w), mode="bilinear",
                             align_corners=False)
        out = torch.where(reg > 0, fake, x)
        return tensor_to_image(out)[0]
