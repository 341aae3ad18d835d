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
  generator; for a static camera, first from its background plate where that saw the scene, the
  rest inpainted from around it), and the
  moved parts are pasted with a soft edge.
- :class:`RefineRenderer` (``refine``): the warp, corrected on a square crop around the changed
  region by a refine-mode generator: ``out = W + M * R`` (outside M, the warp, i.e. the source).
- :class:`GANRenderer` (``gan``): a trained generator, in the run's mode (any architecture in
  full mode; spade also in inpaint mode).  ``full``
  draws the whole image from the new pose maps (the original method; the region is the whole
  image).  ``inpaint`` removes the region around the old and new arms, draws it from the new
  pose maps and the rest of the image, and composites: ``out = M * G + (1 - M) * image``.
"""
from __future__ import annotations

import hashlib
import logging
import os
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..datasets.crops import crop, crop_box, to_crop, union_box
from ..datasets.geometry import (RegionSpec, arm_chains, limb_region, moved_arms, moved_limb_cover,
                                 torso_polygon, torso_size)
from ..datasets.layouts import KeypointLayout
from ..datasets.plate import BACKGROUND_FILE, MAX_RESIDUAL, BackgroundPlate, arm_part_indices, person_mask
from ..datasets.posemaps import PoseMapSpec, render_pose_maps_torch, rescale_keypoints
from ..datasets.sample import pad_people, time_order
from ..datasets.torch_dataset import tensor_to_image
from ..errors import ConfigError
from ..spade.archs import arch_class
from ..spade.archs.refine import refine_input
from ..spade.load import check_compatible, load_generator

__all__ = ["Rendered", "Renderer", "WarpRenderer", "LimbBank", "GANRenderer", "RefineRenderer", "change_region", "make_renderer",
           "load_gan_renderer", "load_refine_renderer", "load_limb_bank", "telea_fill", "RENDERERS", "GAN_RENDERERS"]

log = logging.getLogger(__name__)

RENDERERS = ("warp", "gan", "refine")
GAN_RENDERERS = ("gan", "refine")        # the renderers that take a train-gan run (--gan)


@dataclass
class Rendered:
    images: torch.Tensor          # (B, 3, H, W) in [-1, 1]
    region: torch.Tensor          # (B, 1, H, W) in [0, 1]: where the image may differ from the source
    masks: torch.Tensor           # (B, M, H, W) mask labels of the new images
    keypoints: "np.ndarray | None" = None   # (B, P, K, 3) the poses drawn, where they differ from those asked
                                             # for (an arm the warp would not move keeps its pose); None: as asked


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


def _support(a: np.ndarray) -> "tuple[slice, slice] | None":
    """The bounding box of ``a``'s non-zero pixels (``(H, W)``) as a slice pair, or ``None``."""
    rows, cols = np.nonzero(a.any(1))[0], np.nonzero(a.any(0))[0]
    if not len(rows):
        return None
    return np.s_[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


def _feather(alpha: np.ndarray, sigma: float) -> np.ndarray:
    """``min(alpha, 1.5 x GaussianBlur(alpha, sigma))`` for ``(H, W)`` float ``alpha`` >= 0: the
    pasted part's edge feathered inwards.  Where alpha is 0 the result is 0, so the blur is
    computed only in a window around alpha's support, grown beyond OpenCV's kernel radius for
    float images (4 sigma); a window that would reach the frame's edge is the whole frame (there
    OpenCV's border handling gives the window results one float step off the whole frame's)."""
    on = _support(alpha)
    if on is None:
        return alpha
    pad = int(np.ceil(4 * sigma)) + 2
    h, w = alpha.shape
    if on[0].start - pad <= 0 or on[1].start - pad <= 0 or on[0].stop + pad >= h or on[1].stop + pad >= w:
        return np.minimum(alpha, cv2.GaussianBlur(alpha, (0, 0), sigma) * 1.5)
    win = np.s_[on[0].start - pad:on[0].stop + pad, on[1].start - pad:on[1].stop + pad]
    out = alpha.copy()
    out[win] = np.minimum(alpha[win], cv2.GaussianBlur(alpha[win], (0, 0), sigma) * 1.5)
    return out


def _dilate(mask: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """``cv2.dilate(mask, kernel) > 0`` (``mask`` ``(H, W)``, bool or uint8; ``kernel`` odd-sized),
    computed inside the mask's bounding box grown by the kernel only: the same pixels, at the
    cost of the box rather than the frame."""
    m = np.asarray(mask).astype(np.uint8, copy=False)
    out = np.zeros(m.shape, bool)
    rows, cols = np.nonzero(m.any(1))[0], np.nonzero(m.any(0))[0]
    if not len(rows):
        return out
    ky, kx = kernel.shape[0] // 2, kernel.shape[1] // 2
    win = np.s_[max(rows[0] - ky, 0):rows[-1] + ky + 1, max(cols[0] - kx, 0):cols[-1] + kx + 1]
    out[win] = cv2.dilate(m[win], kernel) > 0
    return out


def telea_fill(img: np.ndarray, hole: np.ndarray, radius: float, max_radius: float = 20.0) -> np.ndarray:
    """OpenCV Telea inpainting of ``hole`` (uint8 {0, 1}), done at a scale where the arm
    capsule radius is at most ``max_radius`` px (the fill is smooth, so nothing is lost) and
    pasted into the full-resolution image inside the hole only.  A small pixel counts as hole
    where about half of it or more is: the rest of the hole's edge is read as known.  The warp
    grows its holes beyond the arm's cut-out (by 0.15 x the arm radius), so that edge holds the
    arm's surroundings; inpainting every small pixel the hole touches (nothing of the hole
    read) scored 0.06 dB lower with the warp, plate and bank on the 5 held-out squats pairs."""
    f = min(1.0, max_radius / max(radius, 1e-6))
    if f >= 1.0:
        return cv2.inpaint(img, hole, max(int(round(radius * 0.3)), 3), cv2.INPAINT_TELEA)
    small = cv2.resize(img, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
    sh = cv2.resize(hole, (small.shape[1], small.shape[0]), interpolation=cv2.INTER_AREA)
    sh = (sh > 0).astype(np.uint8)
    filled = cv2.inpaint(small, sh, max(int(round(max_radius * 0.3)), 3), cv2.INPAINT_TELEA)
    up = cv2.resize(filled, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_LINEAR)
    return np.where(hole[..., None] > 0, up, img)


def fill_hole(img: np.ndarray, hole: np.ndarray, plate: "np.ndarray | None", seen: "np.ndarray | None",
              inpaint: Any) -> np.ndarray:
    """``img`` ``(H, W, 3)`` uint8 with ``hole`` ``(H, W)`` filled: from ``plate`` (a static
    camera's scene, aligned with ``img``) where ``seen`` (bool, inside the hole), first; the rest
    of the hole by ``inpaint(image, rest uint8 {0, 1}) -> (H, W, 3) uint8``, handed the image with
    the plate's part already in, so the inpainting continues the scene rather than ending in an
    edge against it.  ``plate``/``seen`` ``None``: the whole hole inpainted."""
    src, rest = img, np.asarray(hole) > 0
    if plate is not None and seen is not None:
        src, rest = np.where(seen[..., None], plate, img), rest & ~seen
    return inpaint(src, rest.astype(np.uint8)) if rest.any() else src


def _usable_cores() -> int:
    """CPU cores this process may run on (its affinity where the OS tells it), divided among the
    processes torchrun started on this machine."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    except ValueError:
        ranks = 1
    return max(1, n // max(ranks, 1))


def _content_seed(*arrays: np.ndarray) -> int:
    """A 31-bit seed from the bytes (and shapes) of ``arrays``: CRC-32, deterministic across
    processes and platforms."""
    crc = 0
    for a in arrays:
        a = np.ascontiguousarray(a)
        crc = zlib.crc32(np.asarray(a.shape, np.int64).tobytes(), crc)
        crc = zlib.crc32(a.view(np.uint8).reshape(-1), crc) if a.size else crc
    return int(crc & 0x7FFFFFFF)


def _draws_noise(G: Any) -> bool:
    """Whether the generator ``G`` (or the module an inference wrapper holds) draws noise of its
    own (``z_dim > 0``)."""
    for m in (G, getattr(G, "eager", None), getattr(G, "_orig_mod", None)):
        cfg = getattr(m, "cfg", None)
        if cfg is not None:
            return bool(getattr(cfg, "z_dim", 0))
    return False


def _seeded(fn: Any, noise: bool, *inputs: torch.Tensor, keys: "list[np.ndarray] | None" = None) -> torch.Tensor:
    """``fn(*inputs)`` (tensors batched along dim 0).  With ``noise`` (a generator that draws its
    own, :func:`_draws_noise`) one image at a time, the random generators of the CPU and of the
    inputs' GPUs seeded from that image's ``keys[i]`` (default: its inputs; :func:`_content_seed`)
    inside :func:`torch.random.fork_rng`: an image's render then depends neither on the rest of
    its batch nor on what ran before, and those generators are left as they were.  (Not for
    threads: the generators are the process's.)"""
    if not noise or not inputs[0].shape[0]:
        return fn(*inputs)
    cuda = sorted({t.device.index if t.device.index is not None else torch.cuda.current_device()
                   for t in inputs if t.is_cuda})
    outs = []
    with torch.random.fork_rng(devices=cuda):
        for i in range(inputs[0].shape[0]):
            one = [t[i:i + 1] for t in inputs]
            seed = _content_seed(*([keys[i]] if keys is not None else [t.detach().float().cpu().numpy() for t in one]))
            torch.default_generator.manual_seed(seed)
            for d in cuda:
                torch.cuda.default_generators[d].manual_seed(seed)
            outs.append(fn(*one))
    return torch.cat(outs)


def _seg_points(a: np.ndarray, b: np.ndarray, lo: float, hi: float, n: int = 9) -> np.ndarray:
    """``n`` points from ``lo`` to ``hi`` of the way along the segment ``a -> b``, ``(n, 2)``."""
    t = np.linspace(lo, hi, n)[:, None]
    return a[None] * (1 - t) + b[None] * t


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
    person: int = 0
    joints: tuple[int, int, int] = (0, 0, 0)     # (shoulder, elbow, wrist) indices in the layout
    occluded: bool = False                       # a joint of the arm labelled as occluded (v = 1)
    torso: "np.ndarray | None" = None            # the person's shoulder-hip quadrilateral (4, 2)

    def shifted(self, o: np.ndarray) -> "_Arm":
        return _Arm(self.s - o, self.e - o, self.w - o, self.s2 - o, self.e2 - o, self.w2 - o, self.radius,
                    self.person, self.joints, self.occluded, None if self.torso is None else self.torso - o)


#: The limb bank's body fill (:meth:`WarpRenderer._bank_body`): a bank frame's shoulders and hips
#: within this fraction of the torso size of the source's, after one translation; its arms'
#: capsules this many arm radii wide, with a hand this fraction of the forearm; and it agrees
#: with the source around the hole to this many grey levels on average; each pixel is the
#: median of those of this many best-agreeing frames that show it.  Cover, hand and the median
#: were chosen on the squats clip's training-frame pairs (README, "The bank fills the body an
#: arm hid").
BODY_TOL, BODY_COVER, BODY_HAND, BODY_RESIDUAL, BODY_FRAMES = 0.08, 0.8, 0.7, 12.0, 5
#: A bank frame whose moved arm lies within this many arm radii of the source's old arm (every
#: point) is a near copy of the source there (a neighbouring video frame): not a body candidate.
BODY_SAME_ARM = 0.1

#: Why the warp leaves an arm where it is (counted in ``WarpRenderer.stats``).
SKIP_REASONS = ("occluded", "crossed", "empty cut-out", "no boundary", "not the arm's colour", "behind the body")


def _common_colour(img: np.ndarray, part: np.ndarray, reference: np.ndarray, bin_size: float = 10.0,
                   min_share: float = 0.004) -> np.ndarray:
    """Which of ``part``'s pixels (a bool mask of ``img``) have a colour common in
    ``reference``: its CIELAB bin (``bin_size`` units, with the 26 neighbouring bins) holds at
    least ``min_share`` of the reference pixels.  Deterministic.  Returns a bool array over the
    pixels of ``part`` (all False when ``reference`` has fewer than 20 pixels)."""
    if reference.sum() < 20:
        return np.zeros(int(part.sum()), bool)
    rows, cols = np.nonzero((part | reference).any(1))[0], np.nonzero((part | reference).any(0))[0]
    box = np.s_[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]   # only the pixels of part and reference
    img, part, reference = np.ascontiguousarray(img[box]), part[box], reference[box]
    lab = cv2.cvtColor(img, cv2.COLOR_RGB2LAB).astype(np.float32)   # 8-bit: L, a, b in [0, 255]
    nb = int(np.ceil(256 / bin_size))
    q = np.clip((lab / bin_size).astype(np.int64), 0, nb - 1)
    r = q[reference]
    hist = np.bincount((r[:, 0] * nb + r[:, 1]) * nb + r[:, 2], minlength=nb ** 3).astype(np.float32)
    hist = hist.reshape(nb, nb, nb)
    hist = cv2.blur(hist.reshape(nb, nb * nb), (3, 1)).reshape(nb, nb, nb)  # neighbours along L...
    hist = np.stack([cv2.blur(h, (3, 3)) for h in hist]) * 9                 # ... and along a, b
    pq = q[part]
    return hist[pq[:, 0], pq[:, 1], pq[:, 2]] >= min_share * len(r)


class _CroppedFrames:
    """A bank's frames ``keep`` cut at ``box`` and resized to ``size`` (mirrored with ``flip``),
    each when first asked for (:meth:`LimbBank.cropped`)."""

    def __init__(self, images: "list[np.ndarray]", keep: np.ndarray, box: tuple[int, int, int], size: int,
                 flip: bool) -> None:
        self.images, self.keep, self.box, self.size, self.flip = images, keep, box, size, flip
        self.done: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.keep)

    def __getitem__(self, n: int) -> np.ndarray:
        if n not in self.done:
            im = crop(self.images[int(self.keep[n])], self.box, self.size)
            self.done[n] = np.ascontiguousarray(im[:, ::-1]) if self.flip else im
        return self.done[n]


class LimbBank:
    """Frames of one static camera's person, with their keypoints, whose arms the warp may move
    to a new pose instead of the source image's own arm (:class:`WarpRenderer` ``bank``).

    Args:
        images: ``N`` frames ``(H, W, 3)`` uint8 RGB, all of one size.
        keypoints: ``(N, P, K, 3)`` float, ``[x, y, v]`` in the frames' pixels; every person of
            every frame is a candidate (a clip of one person: that person).
        layout: the keypoints' layout (checked against the warp's; ``None``: not checked).
        name: what the frames are called in messages (e.g. the ``--limb-bank`` path).
        body: with a plate, the warp also fills what an old arm hid of the person's own body from
            the frames whose body lies where the source's does (:meth:`WarpRenderer._bank_body`);
            ``False`` (``--bank-body false``): arms only, that part is inpainted.
    """

    def __init__(self, images: "list[np.ndarray]", keypoints: np.ndarray,
                 layout: "KeypointLayout | None" = None, name: str = "the limb bank", body: bool = True) -> None:
        kp = np.asarray(keypoints, np.float64)
        if len(images) == 0 or kp.ndim != 4 or kp.shape[-1] != 3 or len(kp) != len(images):
            raise ConfigError(f"{name}: a limb bank needs N frames and (N, people, keypoints, 3) keypoints, not "
                              f"{len(images)} frames and keypoints of shape {kp.shape}")
        if layout is not None and kp.shape[2] != layout.num_keypoints:
            raise ConfigError(f"{name}: {kp.shape[2]} keypoints per person, but layout '{layout.name}' has "
                              f"{layout.num_keypoints}")
        bad = next((im for im in images if not (isinstance(im, np.ndarray) and im.ndim == 3 and im.shape[2] == 3
                                                and im.dtype == np.uint8)), None)
        if bad is not None:
            raise ConfigError(f"{name}: frames must be (H, W, 3) uint8 RGB, not {getattr(bad, 'shape', type(bad))} "
                              f"{getattr(bad, 'dtype', '')}")
        sizes = sorted({tuple(im.shape[:2]) for im in images})
        if len(sizes) != 1:
            raise ConfigError(f"{name}: frames of {len(sizes)} sizes ({', '.join(f'{w}x{h}' for h, w in sizes)}); a "
                              "limb bank's frames are one camera's, of one size")
        self.images, self.keypoints, self.layout, self.name = list(images), kp, layout, name
        self.size, self.body = sizes[0], bool(body)

    @classmethod
    def from_source(cls, source: Any, name: str = "the limb bank", max_frames: int = 2000,
                    body: bool = True) -> "LimbBank":
        """Every frame of a dataset (:func:`~posesynth.datasets.formats.open_dataset`), held in
        memory (about 2.8 MB a 720x1280 frame), in the clip's order: by the images' ``frame_id``
        where every image has one and they are distinct, else by image id where those are distinct
        integers (several clips each numbered from 0), else as the dataset lists them; so a frame's
        neighbours in the bank are its neighbours in time (refine mode leaves a training image's own
        frame and those either side of it out of its bank)."""
        if len(source) > max_frames:
            raise ConfigError(f"{name}: a limb bank of {len(source)} frames would be held in memory; give at most "
                              f"{max_frames} (e.g. convert --frames or --every)")
        samples = [source[i] for i in range(len(source))]
        samples = [samples[i] for i in time_order(samples)]
        return cls([s.image for s in samples], pad_people([s.keypoints for s in samples],
                                                          num_keypoints=source.layout.num_keypoints),
                   source.layout, name, body)

    def cropped(self, box: tuple[int, int, int], size: int, flip: bool = False,
                leave_out: "np.ndarray | None" = None) -> "LimbBank":
        """The bank seen through a training crop: every frame but those of ``leave_out`` (frame
        indices), cut at ``box`` (``(x0, y0, side)`` in the frames' pixels) and resized to ``size
        x size`` (:func:`~posesynth.datasets.crops.crop`), mirrored with ``flip`` (left and right
        joints swapped; needs :attr:`layout`).  A frame's pixels are cropped when the warp first
        looks at them (most frames are only compared by their keypoints)."""
        keep = np.setdiff1d(np.arange(len(self.images)), leave_out if leave_out is not None else [])
        kp = to_crop(self.keypoints[keep], box, size)
        if flip:
            if self.layout is None:
                raise ConfigError(f"{self.name}: mirroring a bank needs its layout")
            kp = kp[:, :, self.layout.flip_index]
            kp[..., 0] = np.where(kp[..., 2] > 0, size - 1 - kp[..., 0], kp[..., 0])
        return self._view(_CroppedFrames(self.images, keep, box, size, flip), kp, (size, size))

    def _view(self, images: Any, keypoints: np.ndarray, size: tuple[int, int]) -> "LimbBank":
        """A bank of ``images`` (a list, or frames read when asked for) and ``keypoints``, with
        this one's layout, name and body setting (no checks: they are this bank's frames)."""
        out = LimbBank.__new__(LimbBank)
        out.images, out.keypoints, out.size = images, keypoints, size
        out.layout, out.name, out.body = self.layout, self.name, self.body
        return out

    def frames_of(self, kp: np.ndarray, tol: float = 0.5) -> np.ndarray:
        """The indices of the frames that hold the person ``kp`` (``(K, 3)``): every joint within
        ``tol`` px and labelled alike (that image itself, when the bank holds it)."""
        same = (np.abs(self.keypoints[..., :2] - kp[:, :2]) < tol).all(-1) | (self.keypoints[..., 2] <= 0)
        same &= (self.keypoints[..., 2] > 0) == (kp[:, 2] > 0)
        return np.nonzero(same.all(-1).any(-1))[0]

    @staticmethod
    def arm_points(s: np.ndarray, e: np.ndarray, w: np.ndarray, hand: float) -> np.ndarray:
        """``(..., 4, 2)``: shoulder, elbow, wrist and the hand's end (``hand`` x the forearm
        beyond the wrist) of arms given as ``(..., 2)`` joints."""
        return np.stack([s, e, w, w + (w - e) * hand], -2)

    def nearest(self, joints: "list[int]", want: np.ndarray, hand: float) -> tuple[int, int, float]:
        """``(frame, person, distance)``: the arm ``joints`` (shoulder, elbow, wrist, all visible)
        nearest ``want`` (``(4, 2)``, :meth:`arm_points`), by the largest of the four distances
        (pixels); ``(-1, -1, inf)`` when no frame has that arm."""
        k = self.keypoints[:, :, joints]
        pts = self.arm_points(k[:, :, 0, :2], k[:, :, 1, :2], k[:, :, 2, :2], hand)
        d = np.where((k[..., 2] >= 2).all(-1), np.linalg.norm(pts - want, axis=-1).max(-1), np.inf)
        if not np.isfinite(d).any():
            return -1, -1, float("inf")
        n, q = np.unravel_index(int(np.argmin(d)), d.shape)
        return int(n), int(q), float(d[n, q])

    def matches(self, images: "Iterable[np.ndarray]") -> "list[list[int]]":
        """For each of ``images`` (read one at a time), the indices of the bank's frames equal to
        it pixel for pixel (several where the bank repeats a frame; none where it has none)."""
        def key(im: np.ndarray) -> tuple:
            return im.shape, hashlib.blake2b(np.ascontiguousarray(im).tobytes(), digest_size=16).digest()

        own: dict[tuple, list[int]] = {}
        for n, im in enumerate(self.images):
            own.setdefault(key(im), []).append(n)
        return [own.get(key(im), []) for im in images]

    def without(self, frames: "Iterable[int]") -> "LimbBank | None":
        """The bank less its frames ``frames`` (indices), sharing their pixels: the bank itself
        when none is left out, ``None`` when none is left."""
        drop = {int(n) for n in frames}
        if not drop:
            return self
        keep = [n for n in range(len(self.images)) if n not in drop]
        if not keep:
            return None
        return self._view([self.images[n] for n in keep], self.keypoints[keep], self.size)


class WarpRenderer(Renderer):
    """Training-free limb warp (see the module docstring).

    Args:
        layout: keypoint layout of the poses.
        region: capsule radii (torso-relative) for the foreground search and the region M.
        fill: ``"telea"`` (OpenCV inpainting) or a callable ``fill(images uint8 (H, W, 3), hole
            (H, W) uint8, new_kp (P, K, 3)) -> (H, W, 3) uint8`` (e.g. an inpainting generator),
            given a box around the arms.  With a ``background`` plate it is given the image with
            the plate's part of the hole already filled and the rest of the hole only (the
            hole's shape is then not an arm's), and not called when the plate fills it all.
        grabcut_iters: GrabCut iterations per arm (0: the whole capsule is the limb).
        background: a static camera's plate (:class:`~posesynth.datasets.plate.BackgroundPlate`):
            on images of its size, the area an arm leaves is filled from it where it saw the
            scene and no other part of a person lies (the torso an arm covered stays inpainted),
            first; the rest is inpainted from around it, the plate's scene included.
        bank: other frames of the same person and camera (:class:`LimbBank`): an arm is drawn
            from the frame whose arm lies nearest its new place, when that is nearer than the
            source's own arm by more than a pixel, so it travels less and brings its own shading
            and folds; with a plate it also fills what an old arm hid of the person's body,
            unless the bank says not to (:attr:`LimbBank.body`).
        threads: images of a batch rendered at once (OpenCV releases the GIL; each image's
            GrabCut seeds OpenCV's thread-local RNG, so the result is the same bytes for any
            number). ``None``: the CPU cores this process may use, shared among torchrun's
            processes on this machine (``LOCAL_WORLD_SIZE``), at most the batch size.  The warp
            runs on the CPU even when the pose network trains on a GPU, where on one thread it
            was 84-99% of the mixed training step (README, "GPU figures").
        hand_rest: with a plate, what the cut-out leaves of a moved arm's old hand (fingers past
            the hand's capsule, which reaches ``region.hand`` x the forearm beyond the wrist) is
            erased too: pixels up to this many forearms past the wrist, within an arm radius of
            the forearm's line, that differ from the plate, have the hand's colours, lie off the
            body and join the hole where the hand was cut (:meth:`_hand_rest`; 0: not); M grows
            to cover them.  The pasted arm keeps the shorter hand: cutting it longer picks up
            background (-0.5 dB on the squats clip's pairs, README).
    """

    name = "warp"

    def __init__(self, layout: KeypointLayout, region: RegionSpec = RegionSpec(), fill: Any = "telea",
                 grabcut_iters: int = 3, feather_px: float = 1.0, fg_frac: float = 0.6, axis_frac: float = 0.3,
                 blend: float = 0.35, feather: float = 0.12, shoulder_keep: float = 0.6,
                 arm_colour: float = 0.5, torso_colour: float = 0.4,
                 background: "BackgroundPlate | None" = None, threads: "int | None" = None,
                 bank: "LimbBank | None" = None, hand_rest: float = 0.9) -> None:
        if not arm_chains(layout):
            raise ConfigError(f"layout '{layout.name}' names no arms (right/left shoulder, elbow, wrist): "
                              "the warp renderer has nothing to move")
        self.layout, self.region, self.fill = layout, region, fill
        self.grabcut_iters, self.feather_px = grabcut_iters, feather_px
        self.fg_frac, self.axis_frac = fg_frac, axis_frac
        self.blend, self.feather, self.shoulder_keep = blend, feather, shoulder_keep
        self.arm_colour, self.torso_colour = arm_colour, torso_colour
        self.background, self.bank, self.hand_rest = background, bank or None, float(hand_rest)
        if self.bank is not None and (self.bank.keypoints.shape[2] != layout.num_keypoints or (
                self.bank.layout is not None and tuple(self.bank.layout.keypoints) != tuple(layout.keypoints))):
            theirs = f"layout '{self.bank.layout.name}'" if self.bank.layout is not None else \
                f"{self.bank.keypoints.shape[2]} keypoints per person"
            raise ConfigError(f"{self.bank.name}: {theirs}, but the warp's layout is '{layout.name}'")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ConfigError(f"threads must be a whole number >= 1 or None (got {threads!r})")
        self.threads = threads
        self.last_limb: "np.ndarray | None" = None   # (B, H, W) alpha of the pasted limbs (for tests, reports)
        self._said_size = False   # the bank's frames were said to be of another size than an image
        self.stats: dict[str, Any] = self.new_stats()   # arms asked to move, moved, left

    @staticmethod
    def new_stats() -> dict[str, Any]:
        return {"arms": 0, "moved": 0, "skipped": {}}

    def add_stats(self, st: dict[str, Any]) -> None:
        """Adds one call's counts (:meth:`render_pose` with ``stats=``) to :attr:`stats`."""
        for k, v in st.items():
            if isinstance(v, dict):
                for why, n in v.items():
                    self.stats[k][why] = self.stats[k].get(why, 0) + n
            else:
                self.stats[k] = self.stats.get(k, 0) + v

    def describe(self) -> dict[str, Any]:
        bg = self.background
        plate = {} if bg is None else {"background": {
            "size": f"{bg.size[1]}x{bg.size[0]}", "frames": bg.frames, "residual": round(bg.residual, 2),
            "known": round(float(bg.known.mean()), 3), "disagrees": self.stats.get("plate_disagrees", 0),
            "other_size": self.stats.get("plate_other_size", 0)}}
        if self.bank is not None:
            plate["bank"] = {"frames": len(self.bank.images), **{k[5:] or "used": self.stats.get(k, 0) for k in (
                "bank", "bank_farther", "bank_refused", "bank_other_size")}}
            # bodies (a person of an image each) whose hidden part the bank filled (in part), and those
            # for which it found no frame that shows it and agrees; not counted: a person with fewer
            # than 3 of shoulders and hips labelled, or under 20 px of the hole on the body
            plate["bank_body"] = {"filled": self.stats.get("bank_body", 0),
                                  "not_filled": self.stats.get("bank_body_none", 0)} if self.bank.body else "off"
        return {"renderer": "warp", "fill": self.fill if isinstance(self.fill, str) else "generator", **plate,
                "grabcut_iters": self.grabcut_iters, "arms": self.stats["arms"], "moved": self.stats["moved"],
                "skipped": dict(self.stats["skipped"])}

    # -- one image -------------------------------------------------------------------------
    def _arms(self, old: np.ndarray, new: np.ndarray, every_arm: bool = False) -> list[_Arm]:
        arms = []
        for p in range(old.shape[0]):
            ts = torso_size(old[p], self.layout)
            if not np.isfinite(ts):
                continue
            r = (self.region.radius + self.region.dilate) * ts
            poly = torso_polygon(old[p].astype(np.float64), self.layout)
            chains = arm_chains(self.layout) if every_arm else moved_arms(old[p], new[p], self.layout)
            for s, e, w in chains:
                if (old[p, [s, e, w], 2] <= 0).any():
                    continue
                arms.append(_Arm(*(old[p, j, :2].astype(np.float64) for j in (s, e, w)),
                                 *(new[p, j, :2].astype(np.float64) for j in (s, e, w)), float(r), p, (s, e, w),
                                 bool((old[p, [s, e, w], 2] == 1).any()), poly))
        return arms

    def plausible(self, img: np.ndarray, arm: _Arm, m: np.ndarray, others: "list[_Arm]" = ()) -> "str | None":
        """Why the cut-out ``m`` (bool, ``img``'s size) of ``arm`` should not be moved (one of
        :data:`SKIP_REASONS`), or ``None`` when it is the arm:

        - ``occluded``: a joint of the arm is labelled as occluded (``v = 1``);
        - ``crossed``: another arm of the person (``others``) lies over this one (a quarter of
          its bone axis within the other's capsule), so one hides the other;
        - ``empty cut-out``: GrabCut kept less than half of the bone axis;
        - ``no boundary``: the cut-out fills nearly the whole capsule (no edge between the arm
          and what is around it, so what would travel is background or torso);
        - ``not the arm's colour``: less than half of the cut-out has the colours of the bone
          axis (certainly arm): it caught something else;
        - ``behind the body``: ``torso_colour`` (0.4) of the cut-out lies over the torso (its
          shoulder-hip quadrilateral grown by half the radius) in the colours of the torso away
          from the arm: what would travel is shirt, not arm (an arm hidden behind the body, or in
          front of a torso it cannot be told from).  Not where the person's arms are the torso's
          colour wherever they are clear of it (sleeves of the shirt's colour, as in the drawn
          scenes): colour then cannot tell in front from behind.
        """
        if arm.occluded:
            return "occluded"
        h, w = m.shape
        hand = arm.w + (arm.w - arm.e) * self.region.hand
        axis = np.concatenate([_seg_points(arm.s, arm.e, 0.15, 0.9), _seg_points(arm.e, hand, 0.1, 0.9)])
        for o in others:
            o_hand = o.w + (o.w - o.e) * self.region.hand
            d = np.minimum.reduce([_seg_dist(axis[:, 0], axis[:, 1], o.s, o.e), _seg_dist(axis[:, 0], axis[:, 1], o.e, o.w),
                                   _seg_dist(axis[:, 0], axis[:, 1], o.w, o_hand)])
            if (d <= o.radius).mean() >= 0.25:
                return "crossed"
        xi, yi = np.clip(np.round(axis[:, 0]).astype(int), 0, w - 1), np.clip(np.round(axis[:, 1]).astype(int), 0, h - 1)
        inside = (axis[:, 0] >= 0) & (axis[:, 1] >= 0) & (axis[:, 0] <= w - 1) & (axis[:, 1] <= h - 1)
        if not inside.any() or m[yi[inside], xi[inside]].mean() < 0.5:
            return "empty cut-out"
        x0, y0 = np.maximum(np.floor(np.minimum.reduce([arm.s, arm.e, hand]) - arm.radius).astype(int), 0)
        x1, y1 = np.minimum(np.ceil(np.maximum.reduce([arm.s, arm.e, hand]) + arm.radius).astype(int) + 1, (w, h))
        ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float64)
        dist = np.minimum.reduce([_seg_dist(xs, ys, arm.s, arm.e), _seg_dist(xs, ys, arm.e, arm.w),
                                  _seg_dist(xs, ys, arm.w, hand)])
        if self.grabcut_iters > 0 and m[y0:y1, x0:x1][dist <= arm.radius].mean() > 0.9:
            return "no boundary"
        core = np.zeros((h, w), bool)
        core[y0:y1, x0:x1] = dist <= max(self.axis_frac * arm.radius, 1.0)
        if m.sum() >= 20 and _common_colour(img, m, core & m).mean() < self.arm_colour:
            return "not the arm's colour"
        if arm.torso is not None and m.sum() >= 20:
            torso = np.zeros((h, w), np.uint8)
            cv2.fillPoly(torso, [np.round(arm.torso).astype(np.int32)], 1)
            k = max(int(round(arm.radius)) | 1, 3)
            over = _dilate(torso, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))   # + r/2 around it
            capsule = np.zeros((h, w), bool)
            capsule[y0:y1, x0:x1] = dist <= arm.radius
            body = (torso > 0) & ~capsule   # the torso away from this arm
            if (over[m] & _common_colour(img, m, body)).mean() >= self.torso_colour \
                    and not self._torso_coloured_arms(img, [arm, *others], over, body):
                return "behind the body"
        return None

    @staticmethod
    def _torso_coloured_arms(img: np.ndarray, arms: "list[_Arm]", over: np.ndarray, body: np.ndarray) -> bool:
        """Whether the person's arms, where they lie clear of the torso (bone axes outside
        ``over``), mostly have the torso's colours (sleeves of the shirt's colour): colour then
        cannot tell an arm in front of the torso from one behind it, and the torso-colour test
        says nothing.  ``False`` when fewer than 10 such axis pixels are seen."""
        h, w = over.shape
        pts = np.concatenate([np.concatenate([_seg_points(a.s, a.e, 0.1, 0.9, 25), _seg_points(a.e, a.w, 0.1, 0.9, 25)])
                              for a in arms])
        xi, yi = np.round(pts[:, 0]).astype(int), np.round(pts[:, 1]).astype(int)
        ok = (xi >= 0) & (yi >= 0) & (xi < w) & (yi < h)
        clear = np.zeros((h, w), bool)
        clear[yi[ok], xi[ok]] = True
        clear &= ~over
        if clear.sum() < 10:
            return False
        return bool(_common_colour(img, clear, body).mean() >= 0.5)

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
        (new image uint8, pasted-limb alpha ``(H, W)`` float32, filled hole ``(H, W)`` bool);
        :meth:`render_pose` also gives the pose drawn."""
        return self.render_pose(img, old, new)[:3]

    def render_pose(self, img: np.ndarray, old: np.ndarray, new: np.ndarray, stats: "dict | None" = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`render_one`, plus the ``(P, K, 3)`` keypoints drawn: ``new``'s elbows and wrists
        for the arms moved; an arm the warp does not move (:meth:`plausible`) keeps its old
        elbow, wrist and hand points; a moved arm's hand points (a layout's pinky, index, thumb)
        are those of the hand pasted, moved with its forearm (the source's, or the limb bank's
        arm's, with their visibility there).  The arms moved and skipped are counted in
        ``stats`` (default :attr:`stats`; a thread passes its own, :meth:`new_stats`, and the
        caller adds it with :meth:`add_stats`)."""
        st = self.stats if stats is None else stats
        H, W = img.shape[:2]
        # the pose drawn: every arm asked to move starts at its old place, and gets its new one only
        # when it is moved (an arm with an unlabelled joint or no torso to size it is not)
        drawn = np.array(new, np.float32, copy=True)
        for p in range(old.shape[0]):
            for s_, e, w in moved_arms(old[p], new[p], self.layout):
                part = [e, w] + self._hand_points((s_, e, w))
                drawn[p, part, :2] = old[p, part, :2]
        arms = self._arms(old, new)
        if not arms:
            return img.copy(), np.zeros((H, W), np.float32), np.zeros((H, W), bool), drawn
        # the bank's arms nearer the new places than the source's own (chosen from the keypoints)
        chosen = self._bank_choice(arms, (H, W)) if self.bank is not None else {}
        # everything happens inside the box around the old and new arms (and the bank's arms that
        # will be moved there; outside it nothing changes), so the cost follows the arms' size
        pts = np.concatenate([np.stack([a.s, a.e, a.w, a.w + (a.w - a.e) * self.region.hand, a.e2, a.w2,
                                        a.w2 + (a.w2 - a.e2) * self.region.hand]) for a in arms]
                             + [c[2] for c in chosen.values() if not isinstance(c, str)])
        pad = 2.5 * max(a.radius for a in arms)
        x0, y0 = np.maximum(np.floor(pts.min(0) - pad).astype(int), 0)
        x1, y1 = np.minimum(np.ceil(pts.max(0) + pad).astype(int) + 1, (W, H))
        o = np.array([x0, y0], np.float64)
        arms = [a.shifted(o) for a in arms]
        full = img
        img = np.ascontiguousarray(img[y0:y1, x0:x1])
        h, w = img.shape[:2]
        masks = [self.limb_mask(img, a) for a in arms]
        keep = []
        st["arms"] += len(arms)
        every = [a.shifted(o) for a in self._arms(old, old, every_arm=True)]   # moved or not, at their old place
        for m, a in zip(masks, arms):
            why = self.plausible(img, a, m, [b for b in every if b.person == a.person and b.joints != a.joints])
            if why is None:
                keep.append((m, a))
                drawn[a.person, list(a.joints[1:]), :2] = new[a.person, list(a.joints[1:]), :2]   # moved
                continue
            st["skipped"][why] = st["skipped"].get(why, 0) + 1   # it keeps its pose
        if not keep:
            return full.copy(), np.zeros((H, W), np.float32), np.zeros((H, W), bool), drawn
        st["moved"] += len(keep)
        new_rel = drawn.copy()
        new_rel[..., :2] -= o.astype(np.float32)
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
        hole = np.zeros((h, w), np.uint8)
        for m, a in keep:
            k = max(int(round(0.15 * a.radius)) * 2 + 1, 3)
            grown = _dilate(m, np.ones((k, k), np.uint8)).astype(np.uint8)
            # the shoulder joint stays where it is: it belongs to the old and the new arm alike
            grown[np.hypot(xs - a.s[0], ys - a.s[1]) <= self.shoulder_keep * a.radius] = 0
            hole |= grown
        # the plate first, where it saw what the arm hid; the rest of the hole is inpainted from
        # around it, the plate's scene included (not from the old arm's surroundings alone)
        plate = seen = None
        if self.background is not None:
            if self.background.size == (H, W):
                seen, rest = self._plate_seen(img, hole, old, o, keep, (y0, y1, x0, x1), st, xs, ys)
                hole |= rest.astype(np.uint8)
                plate = self.background.image[y0:y1, x0:x1]
            else:   # another camera's frame size: inpainted, and counted
                st["plate_other_size"] = st.get("plate_other_size", 0) + 1
        if self.bank is not None and self.bank.body and self.bank.size == (H, W) and seen is not None:
            # each person whose arms moved: the bank's body where the plate has no scene, a plate
            # for that part of the hole (people one after the other, each on its own body); where
            # another person's body lies too, which one is in front is unknown: inpainted
            several = old.shape[0] > 1
            bare = self._without_moved_arms(old - np.r_[o, 0], [a for _, a in keep]) if several else None
            for p in dict.fromkeys(a.person for _, a in keep):
                unfilled = (hole > 0) & ~seen
                if several:
                    unfilled &= ~person_mask(np.delete(bare, p, axis=0), self.layout, (h, w))
                body = self._bank_body(img, unfilled, hole, old, o, [a for _, a in keep if a.person == p],
                                       (y0, y1, x0, x1), st)
                if body is not None:
                    plate, seen = np.where(body[1][..., None], body[0], plate), seen | body[1]
        if isinstance(self.fill, str):
            radius = float(np.mean([a.radius for _, a in keep]))
            base = fill_hole(img, hole, plate, seen, lambda im, rest: telea_fill(im, rest, radius))
        else:
            base = fill_hole(img, hole, plate, seen, lambda im, rest: self.fill(im, rest, new_rel))
        out = base.astype(np.float64)
        alpha_all = np.zeros((h, w), np.float32)
        for m, a in keep:
            c, banked = chosen.get((a.person, a.joints)), None
            if isinstance(c, str):   # why no bank arm: counted for the arms moved only
                st[c] = st.get(c, 0) + 1
            elif c is not None:
                banked = self._bank_arm(a, c, o, (y0, y1, x0, x1), st)
            colour, alpha = self._moved_arm(*(banked or (img, m, a)), xs, ys)
            self._move_hand(drawn, a, old if banked is None else self.bank.keypoints[c[0]],
                            a.person if banked is None else c[1])
            on = _support(alpha)   # where alpha is 0 the image stays as it is
            if on is not None:
                out[on] = alpha[on][..., None] * colour[on] + (1 - alpha[on][..., None]) * out[on]
                alpha_all[on] = np.maximum(alpha_all[on], alpha[on])
        res = full.copy()
        res[y0:y1, x0:x1] = np.clip(out.round(), 0, 255).astype(np.uint8)
        alpha_f = np.zeros((H, W), np.float32)
        alpha_f[y0:y1, x0:x1] = alpha_all
        hole_f = np.zeros((H, W), bool)
        hole_f[y0:y1, x0:x1] = hole > 0
        return res, alpha_f, hole_f, drawn

    def _hand_points(self, joints: tuple[int, int, int]) -> list[int]:
        """The layout's hand points (beyond the wrist) of the arm ``(shoulder, elbow, wrist)``."""
        side = self.layout.keypoints[joints[0]].split("_")[0]
        return [i for i in arm_part_indices(self.layout, side) if i not in joints]

    def _move_hand(self, drawn: np.ndarray, a: _Arm, src: np.ndarray, q: int) -> None:
        """Put the hand points of moved arm ``a`` into ``drawn`` ``(P, K, 3)``, in place: those of
        person ``q`` of ``src`` ``(P', K, 3)`` (full-frame keypoints of the image whose arm was
        pasted), moved by the forearm's transform from its elbow and wrist there to ``a``'s new
        ones (as the hand's pixels are), with their visibility there."""
        hand = self._hand_points(a.joints)
        if not hand:
            return
        e, w = src[q, a.joints[1], :2].astype(np.float64), src[q, a.joints[2], :2].astype(np.float64)
        e2, w2 = drawn[a.person, a.joints[1], :2].astype(np.float64), drawn[a.person, a.joints[2], :2].astype(np.float64)
        mat = _bone_affine(e, w, e2, w2)
        pts = src[q, hand, :2].astype(np.float64)
        drawn[a.person, hand, :2] = pts @ mat[:, :2].T + mat[:, 2]
        drawn[a.person, hand, 2] = src[q, hand, 2]

    def _bank_choice(self, arms: "list[_Arm]", hw: tuple[int, int]
                     ) -> "dict[tuple[int, tuple[int, int, int]], tuple[int, int, np.ndarray] | str]":
        """For each arm asked to move (full-frame coordinates): the bank's arm nearer its new
        place than its own old place by more than a pixel, ``(person, joints) -> (frame, bank
        person, (4, 2) points of that arm)``, or why there is none (the stats key it is counted
        under when the arm is moved: ``bank_farther``, or ``bank_other_size`` on an image of
        another size than the bank's frames, said once)."""
        bank = self.bank
        if bank.size != hw:
            if not self._said_size:
                self._said_size = True
                log.warning("%s: frames of %dx%d, not this image's %dx%d: its arms are not used for such images",
                            bank.name, bank.size[1], bank.size[0], hw[1], hw[0])
            return {(a.person, a.joints): "bank_other_size" for a in arms}
        out: "dict[tuple[int, tuple[int, int, int]], tuple[int, int, np.ndarray] | str]" = {}
        for a in arms:
            want = LimbBank.arm_points(a.s2, a.e2, a.w2, self.region.hand)
            own = float(np.linalg.norm(LimbBank.arm_points(a.s, a.e, a.w, self.region.hand) - want, axis=-1).max())
            n, q, d = bank.nearest(list(a.joints), want, self.region.hand)
            if n < 0 or d >= own - 1.0:
                out[a.person, a.joints] = "bank_farther"
                continue
            k = bank.keypoints[n, q, list(a.joints), :2]
            out[a.person, a.joints] = (n, q, LimbBank.arm_points(k[0], k[1], k[2], self.region.hand))
        return out

    def _bank_arm(self, a: _Arm, choice: "tuple[int, int, np.ndarray]", o: np.ndarray,
                  box: tuple[int, int, int, int], st: dict) -> "tuple[np.ndarray, np.ndarray, _Arm] | None":
        """The bank's arm ``choice`` (:meth:`_bank_choice`) to move to ``a``'s new place (both in
        the crop ``box``, offset ``o``) instead of the source's: ``(the bank frame's crop, its
        cut-out, the arm from its place there to a's new one)``, or ``None`` when its cut-out is
        not plausible (the source's arm is moved; counted)."""
        n, q, _ = choice
        y0, y1, x0, x1 = box
        kb = self.bank.keypoints[n]
        img = np.ascontiguousarray(self.bank.images[n][y0:y1, x0:x1])
        s, e, w = (kb[q, j, :2] - o for j in a.joints)
        torso = torso_polygon(kb[q], self.layout)
        arm = _Arm(s, e, w, a.s2, a.e2, a.w2, a.radius, q, a.joints, False, None if torso is None else torso - o)
        m = self.limb_mask(img, arm)
        every = [b.shifted(o) for b in self._arms(kb, kb, every_arm=True)]
        if self.plausible(img, arm, m, [b for b in every if b.person == q and b.joints != a.joints]) is not None:
            st["bank_refused"] = st.get("bank_refused", 0) + 1
            return None
        st["bank"] = st.get("bank", 0) + 1
        return img, m, arm

    def _bank_body(self, img: np.ndarray, rest: np.ndarray, hole: np.ndarray, old: np.ndarray, o: np.ndarray,
                   moved: "list[_Arm]", box: tuple[int, int, int, int], st: dict
                   ) -> "tuple[np.ndarray, np.ndarray] | None":
        """What the moved arms hid of the person's own body, from the bank: ``(colour (h, w, 3)
        uint8, where it is known (h, w) bool)`` over the crop ``box`` (offset ``o``), or ``None``.
        ``rest`` is the part of the hole the plate does not fill (and, with several people, that
        lies on no other person's body); ``old`` the image's ``(P, K, 3)`` keypoints; ``moved``
        the arms of one person (the first arm's person is taken: the warp calls this once for
        each person whose arms moved).  Only the part of ``rest`` on that person's body
        (:func:`~posesynth.datasets.plate.person_mask` without the moved arms: torso, trousers)
        is filled: the scene does not move with the body.

        Candidates are the bank's people whose shoulders and hips, after one translation (the
        mean of their offsets: a squat moves the body up and down), all lie within
        :data:`BODY_TOL` x the torso size of the source's, and whose moved arm does not lie where
        the source's old one was (within :data:`BODY_SAME_ARM` x the arm radius: a near copy of
        the source, it hides the same body; the source's own frame, if the bank holds it, is not
        one either); the nearest 24.  Each is translated onto the source (bilinear) and may fill
        the part of ``rest`` that none of its own arms covers (capsules of :data:`BODY_COVER` x
        the arm radius around the upper arm, forearm and a hand of :data:`BODY_HAND` x the
        forearm) and where it does not show the scene (its colour within
        :data:`~posesynth.datasets.plate.MAX_RESIDUAL` of the plate's there, at the frame's own
        place); one with an arm not fully labelled is not used.  It is used only when, around
        ``rest`` (outside the hole, its arms and the source's), it differs from the source by at
        most :data:`BODY_RESIDUAL` grey levels on average: the body lies where the keypoints say,
        and is lit the same.  Called only with a plate.  Of the
        :data:`BODY_FRAMES` candidates that agree best, each pixel is the median of those that
        show it (one, two or more)."""
        bank, lay, bg = self.bank, self.layout, self.background
        y0, y1, x0, x1 = box
        h, w = rest.shape
        p = moved[0].person
        src = old[p].astype(np.float64)
        body = [i for i, n in enumerate(lay.keypoints) if n.endswith(("shoulder", "hip")) and src[i, 2] > 0]
        ts = torso_size(src, lay)
        if len(body) < 3 or not np.isfinite(ts):
            return None
        # only the person's own body travels with it: the scene (a static camera's) does not, and
        # another person's hole is not this body's
        mine = [a for a in moved if a.person == p]
        kept = self._without_moved_arms(old - np.r_[o, 0], mine)[p:p + 1]
        rest = rest & person_mask(kept, lay, (h, w))
        if rest.sum() < 20:
            return None
        kb = bank.keypoints                                                  # (N, Q, K, 3)
        d = kb[:, :, body, :2] - src[body, :2]
        shift = d.mean(2)                                                    # (N, Q, 2)
        resid = np.linalg.norm(d - shift[:, :, None], axis=-1).max(-1)
        resid[~(kb[:, :, body, 2] > 0).all(-1)] = np.inf
        same = (np.abs(kb[..., :2] - src[:, :2]).max(-1) < 0.5).all(-1) & ((kb[..., 2] > 0) == (src[:, 2] > 0)).all(-1)
        resid[same] = np.inf                                                 # the source itself shows nothing new
        r = max(a.radius for a in mine)
        # a frame whose moved arm lies where the source's old one was (a neighbouring frame of the
        # video, nearly the same picture) hides the same body: not a candidate
        for a in mine:
            theirs = kb[:, :, list(a.joints)]
            pts = LimbBank.arm_points(*(theirs[:, :, j, :2] - shift for j in range(3)), BODY_HAND)
            near = np.linalg.norm(pts - LimbBank.arm_points(a.s + o, a.e + o, a.w + o, BODY_HAND), axis=-1).max(-1)
            resid[(near < BODY_SAME_ARM * r) & (theirs[..., 2] > 0).all(-1)] = np.inf
        k = max(int(round(r)) | 1, 3)
        ring = _dilate(rest, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))) \
            & (hole == 0)
        ring &= ~self._arm_cover(src[None] - np.r_[o, 0], (h, w), BODY_COVER * r, allow_unlabelled=True)
        # the candidates are compared and moved inside the box of the hole's rest and its ring only
        ys, xs = np.nonzero(rest | ring)
        wy0, wy1, wx0, wx1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        wh, ww = wy1 - wy0, wx1 - wx0
        rest_w, ring_w, img_w = rest[wy0:wy1, wx0:wx1], ring[wy0:wy1, wx0:wx1], img[wy0:wy1, wx0:wx1]
        found = []
        for flat in np.argsort(resid, axis=None)[:24]:
            n, q = np.unravel_index(int(flat), resid.shape)
            if not resid[n, q] <= BODY_TOL * ts:
                break
            sx, sy = shift[n, q]
            theirs = kb[n].copy()
            theirs[..., :2] -= shift[n, q] + o + (wx0, wy0)
            cover = self._arm_cover(theirs, (wh, ww), BODY_COVER * r)
            if cover is None:
                continue
            # the window's (x, y) is the frame's (x + X, y + Y), with X, Y the window's corner moved
            # onto the bank frame's body: the frame's pixel there, where it lies inside that frame
            X, Y = x0 + wx0 + sx, y0 + wy0 + sy
            mat = np.array([[1, 0, X], [0, 1, Y]], np.float64)
            colour, plate_there = (cv2.warpAffine(im, mat, (ww, wh), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                                  borderMode=cv2.BORDER_REPLICATE) for im in (bank.images[n], bg.image))
            known_there = cv2.warpAffine(bg.known.astype(np.uint8), mat, (ww, wh), flags=cv2.INTER_NEAREST |
                                         cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT, borderValue=0) > 0
            bh, bw = bank.size
            cols = (np.arange(ww) + X >= 0) & (np.arange(ww) + X <= bw - 1)
            rows = (np.arange(wh) + Y >= 0) & (np.arange(wh) + Y <= bh - 1)
            usable = ~cover & rows[:, None] & cols[None, :]
            # where the frame shows the scene (its plate's colour) rather than the body, the scene
            # did not move with the body: that pixel is not taken from it
            where, check = rest_w & usable, ring_w & usable
            cand = np.nonzero(where & known_there)
            where[cand] = np.abs(colour[cand].astype(np.int16) - plate_there[cand]).sum(-1) > 3 * MAX_RESIDUAL
            if where.sum() < 20 or check.sum() < 20:
                continue
            err = float(np.abs(img_w[check].astype(np.int16) - colour[check]).mean())
            if err <= BODY_RESIDUAL:
                found.append((err, int(n), int(q), colour, where))
        if not found:
            st["bank_body_none"] = st.get("bank_body_none", 0) + 1
            return None
        # each pixel: the median of the best-agreeing frames that show it (one frame's stray hand
        # or a gap beside its torso is outvoted)
        best = sorted(found, key=lambda f: f[:3])[:BODY_FRAMES]
        shows = np.stack([f[4] for f in best])
        anywhere = shows.any(0)
        stack = np.stack([f[3][anywhere] for f in best]).astype(np.float32)   # (frames, pixels, 3)
        stack[~shows[:, anywhere]] = np.nan
        done, out = np.zeros((h, w), bool), np.zeros((h, w, 3), np.uint8)
        done[wy0:wy1, wx0:wx1] = anywhere
        out[done] = np.clip(np.round(np.nanmedian(stack, axis=0)), 0, 255).astype(np.uint8)
        st["bank_body"] = st.get("bank_body", 0) + 1
        return out, done

    def _arm_cover(self, kp: np.ndarray, size: tuple[int, int], r: float, allow_unlabelled: bool = False
                   ) -> "np.ndarray | None":
        """``size`` bool: capsules of radius ``r`` px around every arm (upper arm, forearm, and
        a hand of :data:`BODY_HAND` x the forearm) of every person of ``kp`` ``(P, K, 3)`` (in
        the mask's pixels).  An arm with some of its shoulder, elbow and wrist unlabelled could
        be anywhere: ``None`` then, or (``allow_unlabelled``) that arm left out."""
        out = np.zeros(size, np.uint8)
        th = 2 * int(round(r)) + 1
        for person in kp:
            for s, e, wr in arm_chains(self.layout):
                labelled = person[[s, e, wr], 2] > 0
                if not labelled.any():
                    continue
                if not labelled.all():
                    if allow_unlabelled:
                        continue
                    return None
                pts = np.round(LimbBank.arm_points(person[s, :2], person[e, :2], person[wr, :2], BODY_HAND))
                for a, b in zip(pts[:-1].astype(int), pts[1:].astype(int)):
                    cv2.line(out, (int(a[0]), int(a[1])), (int(b[0]), int(b[1])), 1, thickness=th)
        return out > 0

    def _without_moved_arms(self, kp: np.ndarray, moved: "list[_Arm]") -> np.ndarray:
        """A copy of ``(P, K, 3)`` keypoints with the moved arms' elbow, wrist and hand points
        unlabelled (so :func:`~posesynth.datasets.plate.person_mask` covers the body without them)."""
        out = np.array(kp, np.float64, copy=True)
        for a in moved:
            out[a.person, arm_part_indices(self.layout, self.layout.keypoints[a.joints[1]].split("_")[0]), 2] = 0
        return out

    def _plate_seen(self, img: np.ndarray, hole: np.ndarray, old: np.ndarray, o: np.ndarray,
                    keep: "list[tuple[np.ndarray, _Arm]]", box: tuple[int, int, int, int], st: dict,
                    xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(seen, rest)``, ``(h, w)`` bool each in the crop ``box`` (``xs``, ``ys``: its pixel
        coordinates; ``keep``: the moved arms with their cut-outs).  ``seen``: where the hole is
        filled from the background plate: where the plate saw the scene and no other part of a
        person lies (an arm over the torso leaves torso, which the plate may have seen as wall).
        ``rest``: what the cut-out left of the moved arms' old hands (fingers past the hand's
        capsule), to be added to the hole and filled from the plate too (``seen`` includes it),
        :meth:`_hand_rest`.  Both empty on an image whose scene around the hole and its rest
        (known, uncovered, within a radius of them) differs from the plate by more than
        :data:`~posesynth.datasets.plate.MAX_RESIDUAL` grey levels: another scene or another
        light (counted in ``stats["plate_disagrees"]``)."""
        bg, (y0, y1, x0, x1) = self.background, box
        h, w = hole.shape
        plate, known = bg.image[y0:y1, x0:x1], bg.known[y0:y1, x0:x1]
        moved = [a for _, a in keep]
        everyone = old.astype(np.float64, copy=True)
        everyone[..., :2] -= o
        body = self._without_moved_arms(everyone, moved)
        free = known & ~person_mask(body, self.layout, (h, w))   # the plate may fill it
        rest = self._hand_rest(img, hole, keep, free, plate, xs, ys) if self.hand_rest > 0 else np.zeros((h, w), bool)
        grown = (hole > 0) | rest
        # the scene around the hole (the fingers left of an old hand are in the hole, not around it)
        k = max(int(round(max(a.radius for a in moved))) | 1, 3)
        ring = _dilate(grown, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
        ring &= ~grown & known & ~person_mask(everyone, self.layout, (h, w))
        if ring.sum() >= 20 and np.abs(img[ring].astype(np.int16) - plate[ring]).mean() > MAX_RESIDUAL:
            st["plate_disagrees"] = st.get("plate_disagrees", 0) + 1
            return np.zeros((h, w), bool), np.zeros((h, w), bool)
        return grown & free, rest

    def _hand_rest(self, img: np.ndarray, hole: np.ndarray, keep: "list[tuple[np.ndarray, _Arm]]",
                   free: np.ndarray, plate: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """What the cut-outs ``keep`` left of the moved arms' old hands (fingers past the hand's
        capsule, which reaches ``region.hand`` x the forearm beyond the wrist), ``(h, w)`` bool:
        beyond each old wrist, within an arm radius of the forearm's line up to :attr:`hand_rest`
        x the forearm past the wrist, the pixels that may be filled from the plate (``free``:
        it saw the scene there, off the rest of the body), differ from it by more than
        :data:`~posesynth.datasets.plate.MAX_RESIDUAL` grey levels, have a colour common in the
        cut-out's hand (not a held object, hair, another person's clothes), and join the hole
        where the hand was cut; grown by a pixel (the fingers' soft edge) over ``free``.  Only
        inside the warp's working box (2.5 arm radii around the hand's capsule: about 0.8
        forearms past the wrist; growing the box would move the inpainting's pixel grid)."""
        h, w = hole.shape
        rest = np.zeros((h, w), bool)
        differs = np.abs(img.astype(np.int16) - plate).max(-1) > MAX_RESIDUAL
        for m, a in keep:
            f = a.w - a.e
            zone = _seg_dist(xs, ys, a.w, a.w + f * self.hand_rest) <= a.radius
            beyond = (xs - a.w[0]) * f[0] + (ys - a.w[1]) * f[1] > 0     # past the wrist
            cand = zone & beyond & free & differs & (hole == 0)
            if not cand.any():
                continue
            cand[cand] = _common_colour(img, cand, m & beyond)             # the hand's colours
            end = (hole > 0) & zone & beyond                              # the hole where the hand was
            n, lab = cv2.connectedComponents((cand | end).astype(np.uint8), connectivity=8)
            ids = np.unique(lab[end])
            rest |= cand & np.isin(lab, ids[ids > 0])
        if not rest.any():
            return rest
        return _dilate(rest, np.ones((3, 3), np.uint8)) & free & (hole == 0)

    def _moved_arm(self, img: np.ndarray, m: np.ndarray, a: _Arm, xs: np.ndarray, ys: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
        """The arm cut out by ``m`` moved to its new bones: ``(colour (h, w, 3) float32, alpha
        (h, w) in [0, 1])``.  Upper arm and forearm are warped rigidly each, with weights that
        overlap over ``blend`` x radius around the elbow (a blended seam, no cut), an elbow cap
        fills the outer side of a bend, the upper arm fades in from the shoulder (it joins the
        torso there), and the edge is feathered over ``feather`` x radius."""
        h, w = m.shape
        hand = a.w + (a.w - a.e) * self.region.hand
        # every weight is 0 outside the cut-out: computed inside its box only
        rows, cols = np.nonzero(m.any(1))[0], np.nonzero(m.any(0))[0]
        if not len(rows):
            return np.zeros((h, w, 3), np.float32), np.zeros((h, w), np.float32)
        box = np.s_[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
        xs, ys, mb = xs[box], ys[box], m[box]
        d_up = _seg_dist(xs, ys, a.s, a.e)
        d_lo = np.minimum(_seg_dist(xs, ys, a.e, a.w), _seg_dist(xs, ys, a.w, hand))
        tau = max(self.blend * a.radius, 1.0)
        w_up = np.clip(0.5 + (d_lo - d_up) / (2 * tau), 0, 1)
        u = a.e - a.s
        along = ((xs - a.s[0]) * u[0] + (ys - a.s[1]) * u[1]) / max(float(np.linalg.norm(u)), 1e-6)
        fade = np.clip((along - self.shoulder_keep * 0.5 * a.radius) / max(0.6 * a.radius, 1.0), 0, 1)
        cap = (np.hypot(xs - a.e[0], ys - a.e[1]) <= 0.8 * a.radius) & mb
        mf = mb.astype(np.float32)

        def whole(v: np.ndarray) -> np.ndarray:
            out = np.zeros((h, w), v.dtype)
            out[box] = v
            return out
        parts = [(whole(mf * w_up * fade), _bone_affine(a.s, a.e, a.s2, a.e2), 1.0),
                 (whole(mf * (1 - w_up)), _bone_affine(a.e, a.w, a.e2, a.w2), 1.0),
                 (whole(cap.astype(np.float32)), np.array([[1, 0, a.e2[0] - a.e[0]], [0, 1, a.e2[1] - a.e[1]]]), 0.25)]
        acc = np.zeros((h, w, 3), np.float32)
        wsum = np.zeros((h, w), np.float32)
        cover = np.zeros((h, w), np.float64)
        for weight, mat, strength in parts:
            if not weight.any():
                continue
            src = cv2.warpAffine(img, mat, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            wt = cv2.warpAffine(weight, mat, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                                borderValue=0)
            on = _support(wt)   # where the moved part lands (elsewhere its weight is 0)
            if on is None:
                continue
            acc[on] += (strength * wt[on])[..., None] * src[on].astype(np.float32)
            wsum[on] += strength * wt[on]
            cover[on] = np.maximum(cover[on], wt[on])
        colour = acc / np.maximum(wsum, 1e-6)[..., None]
        sigma = max(self.feather * a.radius, self.feather_px)
        alpha = np.clip(cover, 0, 1)
        if sigma > 0:
            alpha = _feather(alpha, sigma)
        return colour, np.clip(alpha, 0, 1)

    def render_batch(self, imgs: "list[np.ndarray] | np.ndarray", old_kp: np.ndarray, new_kp: np.ndarray
                     ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        """:meth:`render_pose` of every image (``(H, W, 3)`` uint8 each, with ``(P, K, 3)`` old
        and new keypoints), on :attr:`threads` threads, in order; counts added to :attr:`stats`."""
        jobs = list(zip(imgs, old_kp, new_kp))
        n = self.threads or _usable_cores()
        n = max(1, min(n, len(jobs)))
        if not isinstance(self.fill, str):
            n = 1   # a generator as the fill runs its own batch on its device: one image at a time

        def one(job):
            st = self.new_stats()
            return self.render_pose(*job, stats=st), st
        if n == 1:
            done = [one(j) for j in jobs]
        else:
            with ThreadPoolExecutor(n, thread_name_prefix="warp") as ex:
                done = list(ex.map(one, jobs))
        for _, st in done:
            self.add_stats(st)
        return [r for r, _ in done]

    def __call__(self, images: torch.Tensor, masks: torch.Tensor, old_kp: np.ndarray, new_kp: np.ndarray) -> Rendered:
        dev = images.device
        imgs = tensor_to_image(images)
        outs, alphas, holes, drawn = zip(*self.render_batch(imgs, old_kp, new_kp))
        new_kp = np.stack(drawn)   # an arm the warp left where it was keeps its pose in the labels
        new = torch.from_numpy(np.stack(outs)).to(dev).permute(0, 3, 1, 2).float().div(127.5).sub(1)
        # M, from the keypoints (the capsules around the moved bones, old and new), and where it
        # is 0, the old hands' rest erased with a plate (fingers past the hand's capsule,
        # _hand_rest; the hole that reaches past M); the warp's changes are clamped to it: the
        # soft edge of a pasted part can reach a pixel or so beyond, and outside M every pixel
        # is the source's
        region = change_region(old_kp, new_kp, self.layout, tuple(images.shape[-2:]), self.region, dev)
        if self.background is not None and self.hand_rest > 0:
            region = torch.where(region > 0, region, torch.from_numpy(np.stack(holes))[:, None].to(dev, region.dtype))
        inside = region > 0
        new = torch.where(inside, new, images.float())
        self.last_limb = np.stack(alphas) * inside[:, 0].cpu().numpy()
        # the seatbelt (or any mask) is hidden under the pasted limb
        m = masks.float() * (1 - torch.from_numpy(self.last_limb).to(dev)[:, None].clamp(0, 1).round())
        return Rendered(new.to(images.dtype), region, m, new_kp)


# ---- GAN ------------------------------------------------------------------------------------
class GANRenderer(Renderer):
    """A trained generator as a renderer (its mode comes from the run).

    Args:
        generator: a :class:`~posesynth.spade.generator.SPADEGenerator` for ``arch`` spade (eval,
            frozen here), or any architecture's generator in full mode.
        mode: ``"full"`` (the whole image from the new pose) or ``"inpaint"`` (spade only).
        layout, spec: the pose-map layout and settings the generator was trained with.
        size: the generator's ``(H, W)``; batches of another size are resized to it and back
            (in inpaint mode the composite is made at the batch's own size).
        device: where the generator runs.
        arch: the run's architecture; ``render``: its ``render(keypoints, size)`` (the arch's
            own input from keypoints; needed for archs other than spade).

    The mask labels of a render are the source's, hidden under the moved arms' new positions
    (capsules of the region's radius around the new bones), as the warp renderer hides them
    under its pasted limbs.
    """

    name = "gan"

    def __init__(self, generator: torch.nn.Module, mode: str, layout: KeypointLayout, spec: PoseMapSpec,
                 size: tuple[int, int], device: "str | torch.device" = "cpu", region: RegionSpec = RegionSpec(),
                 run: str = "", dtype: torch.dtype = torch.float32, arch: str = "spade",
                 render: "Any | None" = None) -> None:
        if mode not in ("full", "inpaint"):
            raise ConfigError(f"GAN mode must be full or inpaint, not {mode!r}")
        if mode == "inpaint" and arch != "spade":
            raise ConfigError(f"inpaint mode is a spade mode, not {arch}'s")
        if arch != "spade" and render is None:
            raise ConfigError(f"a {arch} generator renders through its render(keypoints, size) function")
        self.device = torch.device(device)
        self.G = generator.to(self.device).eval().requires_grad_(False) if arch != "nearest" else generator
        self.mode, self.layout, self.spec, self.size, self.region = mode, layout, spec, tuple(size), region
        self.run, self.arch, self.render_fn = run, arch, render
        self.dtype = dtype          # the generator's input dtype (fp16/bf16 for a half-precision generator)
        self.name = f"gan-{mode}"

    def describe(self) -> dict[str, Any]:
        return {"renderer": self.name, "gan": self.run, "arch": self.arch, "size": list(self.size)}

    def _labels(self, masks: torch.Tensor, old_kp: np.ndarray, new_kp: np.ndarray) -> torch.Tensor:
        if not masks.shape[1]:
            return masks.clone()
        cover = moved_limb_cover(old_kp, new_kp, self.layout, tuple(masks.shape[-2:]), self.region, masks.device)
        return masks * (1 - cover).to(masks.dtype)

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor, masks: torch.Tensor, old_kp: np.ndarray, new_kp: np.ndarray) -> Rendered:
        dev = images.device
        size = tuple(images.shape[-2:])
        gs = self.size
        kpt = torch.from_numpy(np.ascontiguousarray(rescale_keypoints(new_kp, size, gs))).to(self.device)
        labels = self._labels(masks, old_kp, new_kp)
        if self.mode == "full":
            noise = _draws_noise(self.G)
            if self.render_fn is not None:
                people = [k[(k[..., 2] > 0).any(-1)] for k in np.asarray(new_kp, np.float32)]   # not the padding
                fake = _seeded(lambda k: self.render_fn(k, gs), noise, kpt, keys=people).float()
            else:
                maps = render_pose_maps_torch(kpt, self.layout, gs, gs, masks.to(self.device), self.spec)
                fake = _seeded(self.G, noise, maps.to(self.dtype).contiguous(memory_format=torch.channels_last)).float()
            if gs != size:
                fake = F.interpolate(fake, size=size, mode="bilinear", align_corners=False)
            region = torch.ones(images.shape[0], 1, *size, device=dev)
            return Rendered(fake.to(dev, images.dtype), region, labels)
        maps = render_pose_maps_torch(kpt, self.layout, gs, gs, masks.to(self.device), self.spec)
        region = change_region(old_kp, new_kp, self.layout, size, self.region, dev)
        img_g = images.float().to(self.device)
        reg_g = region.to(self.device)
        if gs != size:
            img_g = F.interpolate(img_g, size=gs, mode="bilinear", align_corners=False)
            reg_g = F.interpolate(reg_g, size=gs, mode="bilinear", align_corners=False)
        fake = _seeded(lambda m, i, r: inpaint_forward(self.G, m, i, r, self.dtype), _draws_noise(self.G),
                       maps, img_g, reg_g)
        if gs != size:
            fake = F.interpolate(fake, size=size, mode="bilinear", align_corners=False)
        fake = fake.to(dev)
        out = region * fake + (1 - region) * images.float()
        out = torch.where(region > 0, out, images.float())
        return Rendered(out.to(images.dtype), region, labels)


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


def make_renderer(name: str, layout: KeypointLayout, gan: str = "", device: str = "cpu",
                  background: "BackgroundPlate | bool | None" = None, bank: "LimbBank | None" = None) -> Renderer:
    """A renderer by name: ``warp`` (no training), ``gan`` (the run ``gan``, in its own mode:
    any architecture in full mode, spade in inpaint mode) or ``refine`` (the warp corrected by
    the refine-mode run ``gan``).  ``background``: a static camera's plate the warp (and the
    refiner's warp) fills from (:mod:`posesynth.datasets.plate`); ``None``: none, except the
    plate a refine run was trained with; ``False``: none at all.  ``bank``: frames of the same
    person and camera whose arms the warp (and the refiner's warp) may move instead of the
    source's (:class:`LimbBank`)."""
    if bank is not None and name == "gan":
        raise ConfigError("--limb-bank (frames whose arms the warp moves) is for the warp and refine renderers")
    if name == "warp":
        if gan:
            raise ConfigError("the warp renderer needs no GAN run (leave out --gan, or choose --renderer gan)")
        return WarpRenderer(layout, background=background or None, bank=bank)
    if name in GAN_RENDERERS and not gan:
        raise ConfigError(f"--renderer {name} needs --gan RUN (a train-gan run folder)")
    if name == "gan":
        return load_gan_renderer(gan, layout, device)
    if name == "refine":
        return load_refine_renderer(gan, layout, device, background, bank)
    raise ConfigError(f"renderer must be one of {', '.join(RENDERERS)}, not {name!r}")


def load_gan_renderer(run: str, layout: KeypointLayout, device: str = "cpu", optimize: "Any | None" = None
                      ) -> GANRenderer:
    """The GAN run ``run`` as a renderer of ``layout``'s poses (refused, in one line, when its
    layout differs or its mode cannot draw new poses).  ``optimize(generator, meta) ->
    (generator, dtype)`` may replace a spade generator by a faster copy (e.g.
    :func:`~posesynth.spade.inference.optimize_generator`'s) that runs in ``dtype``."""
    gen, gan_layout, meta = load_generator(run, device)
    check_compatible(gan_layout, layout, run, "the data")
    arch, mode = meta["arch"], meta.get("mode", "full")
    if mode not in ("full", "inpaint"):
        raise ConfigError(f"{run} is a {mode}-mode run, not a gan renderer"
                          + (": use --renderer refine --gan RUN" if mode == "refine" else ""))
    spec = PoseMapSpec.from_dict(meta["posemaps"])
    render, dtype = None, torch.float32
    if arch != "spade":   # any architecture draws the whole image from the new pose through its own input
        render = arch_class(arch, mode).make_render(gen, gan_layout, spec, meta)
    elif optimize is not None:
        gen, dtype = optimize(gen, meta)
    return GANRenderer(gen, mode, gan_layout, spec, tuple(meta["generator"]["size"]), device,
                       region=RegionSpec.from_meta(meta), run=str(run), dtype=dtype, arch=arch, render=render)


# ---- refine ---------------------------------------------------------------------------------
class RefineRenderer(Renderer):
    """The limb warp corrected by a refine-mode generator (see the module docstring).

    Args:
        generator: the run's :class:`~posesynth.spade.generator.SPADEGenerator` (residual output).
        layout, spec: the run's layout and (crop-scale) pose-map settings.
        crop_size, margin: the run's crop.
        device: where the generator runs.
        warp: the warp it corrects (default: :class:`WarpRenderer` with the run's region).
    """

    name = "refine"

    def __init__(self, generator: torch.nn.Module, layout: KeypointLayout, spec: PoseMapSpec, crop_size: int,
                 margin: float, device: "str | torch.device" = "cpu", region: RegionSpec = RegionSpec(),
                 run: str = "", warp: "WarpRenderer | None" = None, dtype: torch.dtype = torch.float32) -> None:
        self.device = torch.device(device)
        self.G = generator.to(self.device).eval().requires_grad_(False)
        self.layout, self.maps_spec, self.crop_size, self.margin = layout, spec, int(crop_size), float(margin)
        self.region, self.run, self.dtype = region, run, dtype
        self.warp = warp if warp is not None else WarpRenderer(layout, region)
        self.last_warp: "torch.Tensor | None" = None   # the uncorrected warp of the last call (reports)

    def describe(self) -> dict[str, Any]:
        return {"renderer": "refine", "gan": self.run, "crop_size": self.crop_size, **{
            k: v for k, v in self.warp.describe().items() if k != "renderer"}}

    @property
    def stats(self) -> dict[str, Any]:
        return getattr(self.warp, "stats", {})

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor, masks: torch.Tensor, old_kp: np.ndarray, new_kp: np.ndarray) -> Rendered:
        rd = self.warp(images, masks, old_kp, new_kp)
        self.last_warp = rd.images
        new_eff = rd.keypoints if rd.keypoints is not None else new_kp
        W = rd.images.float()
        M = rd.region.float()
        h, w = images.shape[-2:]
        boxes, crops_w, crops_m, crops_kp, crops_masks = [], [], [], [], []
        for i in range(images.shape[0]):
            m = M[i, 0].cpu().numpy()
            if not (m > 0).any():
                boxes.append(None)
                continue
            box = union_box(crop_box(old_kp[i], new_eff[i], self.layout, self.region, self.margin), m, self.margin)
            boxes.append(box)
            crops_w.append(crop(tensor_to_image(W[i]), box, self.crop_size))
            crops_m.append(crop(m, box, self.crop_size, cv2.INTER_AREA))
            crops_kp.append(to_crop(new_eff[i], box, self.crop_size))
            mm = rd.masks[i].float().cpu().numpy()
            crops_masks.append(np.stack([crop(x, box, self.crop_size, cv2.INTER_NEAREST) for x in mm]) if len(mm) else
                               np.zeros((0, self.crop_size, self.crop_size), np.float32))
        out = W.clone()
        if crops_w:
            dev = self.device
            wc = torch.from_numpy(np.stack(crops_w)).permute(0, 3, 1, 2).float().div(127.5).sub(1).to(dev)
            mc = torch.from_numpy(np.stack(crops_m).astype(np.float32))[:, None].to(dev)
            kpc = torch.from_numpy(pad_people(crops_kp, num_keypoints=self.layout.num_keypoints)).to(dev)
            maps = render_pose_maps_torch(kpc, self.layout, (self.crop_size, self.crop_size), (self.crop_size, self.crop_size),
                                          torch.from_numpy(np.stack(crops_masks).astype(np.float32)).to(dev),
                                          self.maps_spec)
            x = refine_input(maps, wc, mc).to(self.dtype).contiguous(memory_format=torch.channels_last)
            res = _seeded(self.G, _draws_noise(self.G), x).float()            # (N, 3, S, S) the correction
            j = 0
            for i, box in enumerate(boxes):
                if box is None:
                    continue
                out[i] = _paste_residual(W[i], M[i], res[j].to(W.device), box)
                j += 1
        return Rendered(out.to(images.dtype), rd.region, rd.masks, new_eff)


def _paste_residual(W: torch.Tensor, M: torch.Tensor, res: torch.Tensor, box: tuple[int, int, int]) -> torch.Tensor:
    """``W + M * R`` with the crop's residual ``R`` ``(3, S, S)`` resized to ``box`` and placed
    there; outside M (and outside the box) exactly ``W``."""
    x0, y0, side = box
    _, h, w = W.shape
    up = F.interpolate(res[None], size=(side, side), mode="bilinear", align_corners=False,
                       antialias=side < res.shape[-1])[0]
    full = torch.zeros_like(W)
    ya, yb, xa, xb = max(y0, 0), min(y0 + side, h), max(x0, 0), min(x0 + side, w)
    full[:, ya:yb, xa:xb] = up[:, ya - y0:yb - y0, xa - x0:xb - x0]
    return torch.where(M > 0, (W + M * full).clamp(-1, 1), W)


def load_refine_renderer(run: str, layout: KeypointLayout, device: str = "cpu",
                         background: "BackgroundPlate | bool | None" = None, bank: "LimbBank | None" = None
                         ) -> RefineRenderer:
    """A refine-mode GAN run as ``--renderer refine`` (refused, in one line, for another mode).
    Its warp fills from ``background``; with ``None``, from the plate the run was trained with
    (``background.png`` in the run folder, when it has one), on frames of the plate's size;
    with ``False``, from no plate.  Its warp moves the arms of ``bank`` where they are nearer."""
    gen, gan_layout, meta = load_generator(run, device)
    check_compatible(gan_layout, layout, run, "the data")
    if meta.get("mode") != "refine":
        raise ConfigError(f"{run} is a {meta.get('mode', 'full')}-mode run; --renderer refine needs a refine-mode "
                          "run (train-gan --mode refine), or use --renderer gan")
    crop_meta = meta.get("crop", {})
    region = RegionSpec.from_meta(meta)
    if background is None and (Path(run) / BACKGROUND_FILE).exists():
        background = BackgroundPlate.load(Path(run) / BACKGROUND_FILE)
        log.info("%s: filling from the background plate it was trained with (%dx%d; --background none: without)",
                 run, background.size[1], background.size[0])
    return RefineRenderer(gen, gan_layout, PoseMapSpec.from_dict(meta["posemaps"]),
                          int(crop_meta.get("size", meta["generator"]["size"][0])), float(crop_meta.get("margin", 0.25)),
                          device, region=region, run=str(run),
                          warp=WarpRenderer(gan_layout, region, background=background or None, bank=bank))


#: ``--bank-body``'s help, for every command that takes ``--limb-bank``
BANK_BODY_HELP = ("with --limb-bank and a background plate: also fill what a moved arm hid of the person's body from "
                  "the bank's frames whose body lies where the source's does (false: arms only; that part is "
                  "inpainted, as without a bank)")


def load_limb_bank(spec: str, layout: "KeypointLayout | None" = None, body: bool = True,
                   **data_options: Any) -> "LimbBank | None":
    """``--limb-bank``: unset -> ``None``; else every frame of the dataset ``spec`` (a clip of the
    same person and camera, e.g. the training frames; several: ``A,B``) as a :class:`LimbBank`
    (``body``: ``--bank-body``), refused in one line when it cannot be read or its layout is not
    ``layout``."""
    from ..datasets.formats import open_dataset
    from ..errors import PosesynthError

    if not spec:
        return None
    try:
        src = open_dataset(spec, **data_options)
    except PosesynthError as e:
        raise ConfigError(f"--limb-bank {e}") from None
    if layout is not None and src.layout.name != layout.name:
        raise ConfigError(f"--limb-bank {spec}: layout '{src.layout.name}', but the data's is '{layout.name}'")
    return LimbBank.from_source(src, f"--limb-bank {spec}", body=body)
