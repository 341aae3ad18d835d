"""Body geometry shared by perturbation, rendering and metrics.

Coordinates are input pixels ``[x, y]`` (x right, y down, pixel centres at integers).

- :func:`torso_size`: neck (or shoulder midpoint) to hip midpoint, the person's scale.
- :func:`arm_chains`: the ``(shoulder, elbow, wrist)`` indices of each arm a layout names.
- :func:`body_frame` and :func:`arm_angles`: an arm's pose as two angles in the person's own
  frame, so limits mean the same for every person and view:

  * ``down`` is the torso axis (neck to hips); ``out`` is perpendicular to it, pointing from
    the midline to that side's shoulder (so a mirrored person or a back view is handled);
  * **abduction** is the angle from ``down`` to the upper arm, positive towards ``out``
    (0: hanging, 90: horizontal and outward, 180: straight up, negative: across the body);
  * **flexion** is the angle from the upper arm to the forearm, positive in the anatomical
    direction (a hanging forearm bends towards the midline), 0 for a straight arm.

- :func:`limb_segments` and :func:`capsule_region`: the image region covered by arm bones
  (upper arm, forearm, and the hand beyond the wrist), as capsules whose radius follows the
  person's torso size, with a dilated, feathered edge.  Vectorised in torch (any device).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .layouts import KeypointLayout

__all__ = ["torso_size", "arm_chains", "body_frame", "arm_angles", "arm_from_angles", "in_polygon",
           "torso_polygon", "ABDUCTION_RANGE", "MAX_FLEXION", "random_arms", "RegionSpec", "limb_segments", "capsule_region", "moved_arms", "limb_region",
           "moved_limb_cover"]


def _pt(kp: np.ndarray, names: tuple[str, ...], layout: KeypointLayout) -> "np.ndarray | None":
    idx = [layout.keypoints.index(n) for n in names if n in layout.keypoints]
    if len(idx) != len(names) or (kp[idx, 2] <= 0).any():
        return None
    return kp[idx, :2].astype(np.float64).mean(0)


def torso_size(kp: np.ndarray, layout: KeypointLayout) -> float:
    """Distance from the neck (or the shoulders' midpoint) to the hips' midpoint, in pixels;
    ``nan`` when those keypoints are not labelled.  ``kp``: ``(K, 3)``."""
    top = _pt(kp, ("neck",), layout) if "neck" in layout.keypoints else None
    if top is None:
        top = _pt(kp, ("left_shoulder", "right_shoulder"), layout)
    hips = _pt(kp, ("left_hip", "right_hip"), layout)
    if top is None or hips is None:
        return float("nan")
    return float(np.linalg.norm(top - hips))


def arm_chains(layout: KeypointLayout) -> list[tuple[int, int, int]]:
    """``(shoulder, elbow, wrist)`` indices of each arm the layout names (right first)."""
    out = []
    for side in ("right", "left"):
        names = [f"{side}_{j}" for j in ("shoulder", "elbow", "wrist")]
        if all(n in layout.keypoints for n in names):
            out.append(tuple(layout.keypoints.index(n) for n in names))
    return out


def body_frame(kp: np.ndarray, layout: KeypointLayout) -> "tuple[np.ndarray, np.ndarray, np.ndarray] | None":
    """``(top, down, across)`` of one person ``(K, 3)``: the torso's top point (neck or shoulder
    midpoint), the unit torso axis towards the hips, and the unit vector perpendicular to it
    towards the person's left shoulder.  ``None`` without labelled shoulders and hips."""
    ls, rs = _pt(kp, ("left_shoulder",), layout), _pt(kp, ("right_shoulder",), layout)
    hips = _pt(kp, ("left_hip", "right_hip"), layout)
    if ls is None or rs is None or hips is None:
        return None
    top = _pt(kp, ("neck",), layout) if "neck" in layout.keypoints else None
    top = (ls + rs) / 2 if top is None else top
    down = hips - top
    n = np.linalg.norm(down)
    if n < 1e-6:
        return None
    down = down / n
    perp = np.array([-down[1], down[0]])
    across = perp if (ls - rs) @ perp >= 0 else -perp
    return top, down, across


def _angle(v: np.ndarray, ref: np.ndarray, ref90: np.ndarray) -> np.ndarray:
    """Angle (deg) of vectors ``(..., 2)`` from ``ref`` towards ``ref90``."""
    return np.degrees(np.arctan2(v @ ref90, v @ ref))


def arm_angles(shoulder: np.ndarray, elbow: np.ndarray, wrist: np.ndarray, down: np.ndarray,
               out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(abduction, flexion)`` in degrees for arms given as ``(..., 2)`` points, in a frame
    ``down``/``out`` (``out``: unit vector from the midline towards this arm's side)."""
    u = elbow - shoulder
    v = wrist - elbow
    abd = _angle(u, down, out)
    un = u / np.maximum(np.linalg.norm(u, axis=-1, keepdims=True), 1e-9)
    # R(u): u rotated by +90 deg in the (down -> out) sense; flexion turns the other way
    ru = (un @ down)[..., None] * out - (un @ out)[..., None] * down
    flex = np.degrees(np.arctan2(-(v * ru).sum(-1), (v * un).sum(-1)))
    return abd, flex


def arm_from_angles(shoulder: np.ndarray, abduction: np.ndarray, flexion: np.ndarray, upper: np.ndarray,
                    fore: np.ndarray, down: np.ndarray, out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`arm_angles`: elbow and wrist ``(..., 2)`` for angles (deg) and bone
    lengths (px, broadcastable)."""
    a = np.radians(abduction)[..., None]
    u = np.cos(a) * down + np.sin(a) * out
    ru = np.cos(a) * out - np.sin(a) * down
    f = np.radians(flexion)[..., None]
    v = np.cos(f) * u - np.sin(f) * ru
    elbow = shoulder + np.asarray(upper)[..., None] * u
    return elbow, elbow + np.asarray(fore)[..., None] * v


#: The joint limits of a human arm in the person's own frame (degrees; see :func:`arm_angles`):
#: the range of shoulder abduction, and the largest elbow flexion (from 0, a straight arm).
#: Perturbations (``PerturbConfig``) and the GAN's training regions take them from here.
ABDUCTION_RANGE: tuple[float, float] = (-30.0, 175.0)
MAX_FLEXION: float = 150.0


def random_arms(kp: np.ndarray, layout: KeypointLayout, rng: np.random.Generator,
                abd_range: tuple[float, float] = ABDUCTION_RANGE, max_flexion: float = MAX_FLEXION) -> np.ndarray:
    """A copy of ``(P, K, 3)`` keypoints with every labelled arm in a random pose within the
    joint limits (abduction and flexion uniform in their ranges; the person's own bone
    lengths), e.g. where a region may have to erase or draw an arm.  People without a body
    frame, and arms with an unlabelled joint, are kept."""
    out = np.array(kp, copy=True)
    for p in range(kp.shape[0]):
        fr = body_frame(kp[p].astype(np.float64), layout)
        if fr is None:
            continue
        _, down, across = fr
        for s, e, w in arm_chains(layout):
            if (kp[p, [s, e, w], 2] <= 0).any():
                continue
            outv = -across if layout.keypoints[s].startswith("right") else across
            sh = kp[p, s, :2].astype(np.float64)
            up, fo = np.linalg.norm(kp[p, e, :2] - sh), np.linalg.norm(kp[p, w, :2] - kp[p, e, :2])
            el, wr = arm_from_angles(sh, np.array(rng.uniform(*abd_range)), np.array(rng.uniform(0, max_flexion)),
                                     up, fo, down, outv)
            out[p, e, :2], out[p, w, :2] = el, wr
    return out


def torso_polygon(kp: np.ndarray, layout: KeypointLayout) -> "np.ndarray | None":
    """The shoulder-hip quadrilateral ``(4, 2)`` (right shoulder, left shoulder, left hip, right
    hip), or ``None`` when a corner is unlabelled."""
    names = ("right_shoulder", "left_shoulder", "left_hip", "right_hip")
    pts = [_pt(kp, (n,), layout) for n in names]
    return None if any(p is None for p in pts) else np.stack(pts)


def in_polygon(points: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Whether ``(..., 2)`` points are strictly inside a simple polygon ``(V, 2)`` (even-odd rule)."""
    p = np.asarray(points, np.float64)
    x, y = p[..., 0:1], p[..., 1:2]
    a, b = poly, np.roll(poly, -1, axis=0)
    cond = (a[:, 1] > y) != (b[:, 1] > y)
    xs = a[:, 0] + (y - a[:, 1]) * (b[:, 0] - a[:, 0]) / np.where(b[:, 1] == a[:, 1], 1e-12, b[:, 1] - a[:, 1])
    return ((cond & (x < xs)).sum(-1) % 2) == 1


@dataclass(frozen=True)
class RegionSpec:
    """The region around arm bones, in fractions of the person's torso size.

    Attributes:
        radius: capsule radius around the upper arm and forearm axes.
        hand: how far the hand reaches beyond the wrist, as a fraction of the forearm length.
        dilate: extra margin added to the radius.
        feather: width of the soft edge (the region falls from 1 to 0 over it).
    """

    radius: float = 0.16
    hand: float = 0.35
    dilate: float = 0.04
    feather: float = 0.05

    @classmethod
    def from_meta(cls, meta: dict) -> "RegionSpec":
        """The region a GAN run recorded (``meta["region"]``); the defaults for runs from before
        it was recorded."""
        return cls(**meta["region"]) if meta.get("region") else cls()


def limb_segments(kp: np.ndarray, layout: KeypointLayout, arms: "list[tuple[int, int, int]] | None" = None,
                  hand: float = RegionSpec.hand) -> tuple[np.ndarray, np.ndarray]:
    """Bone segments of the given arms (default: all) of one person ``(K, 3)``.

    Returns ``(S, 2, 2)`` endpoints in pixels (per arm: upper arm, forearm, and the hand from the
    wrist to ``hand`` x forearm beyond it) and ``(S,)`` the person's torso size per segment (for
    :func:`capsule_region`).  Arms with an unlabelled joint, and people without a torso size,
    give no segments."""
    ts = torso_size(kp, layout)
    segs, scale = [], []
    for s, e, w in (arms if arms is not None else arm_chains(layout)):
        if (kp[[s, e, w], 2] <= 0).any() or not np.isfinite(ts):
            continue
        ps, pe, pw = kp[s, :2], kp[e, :2], kp[w, :2]
        segs += [(ps, pe), (pe, pw), (pw, pw + (pw - pe) * hand)]
        scale += [ts, ts, ts]
    if not segs:
        return np.zeros((0, 2, 2), np.float32), np.zeros(0, np.float32)
    return np.asarray(segs, np.float32), np.asarray(scale, np.float32)


def moved_arms(old: np.ndarray, new: np.ndarray, layout: KeypointLayout, tol: float = 1e-3) -> list[tuple[int, int, int]]:
    """The arms of one person whose elbow or wrist moved by more than ``tol`` px."""
    out = []
    for s, e, w in arm_chains(layout):
        if (np.abs(new[[e, w], :2] - old[[e, w], :2]) > tol).any():
            out.append((s, e, w))
    return out


def capsule_region(segments: torch.Tensor, torso: torch.Tensor, size: tuple[int, int],
                   spec: RegionSpec = RegionSpec(), hand_segment: "torch.Tensor | None" = None) -> torch.Tensor:
    """Soft union of capsules.

    Args:
        segments: ``(B, S, 2, 2)`` segment endpoints in pixels (padding segments may be NaN).
        torso: ``(B, S)`` the owner's torso size in pixels (radius ``(radius + dilate) * torso``,
            feather ``feather * torso``).
        size: ``(H, W)`` of the region.
    Returns:
        ``(B, 1, H, W)`` float32 in [0, 1]: 1 within the radius, falling linearly to 0 over the
        feather width, the maximum over segments.
    """
    b, s = segments.shape[:2]
    h, w = size
    dev = segments.device
    out = torch.zeros(b, 1, h, w, device=dev)
    if s == 0:
        return out
    ys = torch.arange(h, device=dev, dtype=torch.float32).view(1, h, 1)
    xs = torch.arange(w, device=dev, dtype=torch.float32).view(1, 1, w)
    r_in = (spec.radius + spec.dilate) * torso.float()
    fe = (spec.feather * torso.float()).clamp_min(1.0)
    ok_all = torch.isfinite(segments).all(-1).all(-1) & torch.isfinite(r_in)              # (B, S)
    reach = torch.nan_to_num(r_in, nan=0.0) + torch.nan_to_num(fe, nan=1.0)              # (B, S): 0 beyond
    lo = (torch.nan_to_num(segments).amin(2) - reach[..., None]).floor()                  # (B, S, 2)
    hi = (torch.nan_to_num(segments).amax(2) + reach[..., None]).ceil()
    for j in range(s):  # one segment of every image at a time: memory stays (B, H, W)
        ok = ok_all[:, j]
        if not bool(ok.any()):
            continue
        # the box (over the batch) beyond which the capsule's value is 0: only it is computed
        bx0, by0 = (int(v) for v in lo[ok, j].amin(0).clamp_min(0).tolist())
        bx1, by1 = (int(v) + 1 for v in hi[ok, j].amax(0).tolist())
        bx1, by1 = min(bx1, w), min(by1, h)
        if bx1 <= bx0 or by1 <= by0:
            continue
        a, c = torch.nan_to_num(segments[:, j, 0].float()), torch.nan_to_num(segments[:, j, 1].float())
        d = c - a
        L2 = (d * d).sum(-1).clamp_min(1e-9).view(b, 1, 1)
        px, py = xs[..., bx0:bx1] - a[:, 0].view(b, 1, 1), ys[:, by0:by1] - a[:, 1].view(b, 1, 1)
        t = ((px * d[:, 0].view(b, 1, 1) + py * d[:, 1].view(b, 1, 1)) / L2).clamp(0, 1)
        dist = torch.hypot(px - t * d[:, 0].view(b, 1, 1), py - t * d[:, 1].view(b, 1, 1))
        r = torch.nan_to_num(r_in[:, j]).view(b, 1, 1)
        f = torch.nan_to_num(fe[:, j], nan=1.0).view(b, 1, 1)
        val = ((r + f - dist) / f).clamp(0, 1) * ok.view(b, 1, 1)
        win = out[:, 0, by0:by1, bx0:bx1]
        torch.maximum(win, val, out=win)
    return out


def limb_region(old_kp: np.ndarray, new_kp: "np.ndarray | None", layout: KeypointLayout, size: tuple[int, int],
                spec: RegionSpec = RegionSpec(), device: "str | torch.device" = "cpu") -> torch.Tensor:
    """The region around arms, ``(B, 1, H, W)`` float32 in [0, 1] on ``device``.

    With ``new_kp`` (``(B, P, K, 3)`` like ``old_kp``): the capsules of every arm whose elbow or
    wrist moved, at the old and at the new position (what a renderer must erase and draw).
    Without: the capsules of every labelled arm of ``old_kp`` (what an inpainting generator
    learns to redraw).  Radii follow each person's torso size (:class:`RegionSpec`).
    """
    old_kp = np.asarray(old_kp, np.float32)
    b = old_kp.shape[0]
    segs: list[list[np.ndarray]] = [[] for _ in range(b)]
    tors: list[list[np.ndarray]] = [[] for _ in range(b)]
    for i in range(b):
        for p in range(old_kp.shape[1]):
            if new_kp is None:
                poses, arms = [old_kp[i, p]], None
            else:
                arms = moved_arms(old_kp[i, p], new_kp[i, p], layout)
                if not arms:
                    continue
                poses = [old_kp[i, p], new_kp[i, p]]
            for kp in poses:
                s, t = limb_segments(kp, layout, arms, spec.hand)
                segs[i].append(s)
                tors[i].append(t)
    n = max((sum(len(s) for s in segs[i]) for i in range(b)), default=0)
    seg_t = np.full((b, n, 2, 2), np.nan, np.float32)
    tor_t = np.full((b, n), np.nan, np.float32)
    for i in range(b):
        if segs[i]:
            s, t = np.concatenate(segs[i]), np.concatenate(tors[i])
            seg_t[i, :len(s)], tor_t[i, :len(t)] = s, t
    return capsule_region(torch.from_numpy(seg_t).to(device), torch.from_numpy(tor_t).to(device), size, spec)


def moved_limb_cover(old_kp: np.ndarray, new_kp: np.ndarray, layout: KeypointLayout, size: tuple[int, int],
                     spec: RegionSpec = RegionSpec(), device: "str | torch.device" = "cpu") -> torch.Tensor:
    """Where the moved arms are drawn: ``(B, 1, H, W)`` float32 in {0, 1}, the capsules of radius
    ``spec.radius`` x torso size (no dilation, no feather) around every moved bone at its new
    position (``old_kp``, ``new_kp``: ``(B, P, K, 3)``).  What lies under them (a seatbelt) is
    hidden in the new image."""
    new_kp = np.asarray(new_kp, np.float32)
    old_kp = np.asarray(old_kp, np.float32)
    b = new_kp.shape[0]
    segs = [[limb_segments(new_kp[i, p], layout, moved_arms(old_kp[i, p], new_kp[i, p], layout) or [], spec.hand)
             for p in range(new_kp.shape[1])] for i in range(b)]
    n = max((sum(len(s) for s, _ in row) for row in segs), default=0)
    seg_t = np.full((b, n, 2, 2), np.nan, np.float32)
    tor_t = np.full((b, n), np.nan, np.float32)
    for i, row in enumerate(segs):
        if any(len(s) for s, _ in row):
            s, t = np.concatenate([s for s, _ in row]), np.concatenate([t for _, t in row])
            seg_t[i, :len(s)], tor_t[i, :len(t)] = s, t
    tight = RegionSpec(radius=spec.radius, dilate=0.0, feather=1e-6, hand=spec.hand)
    region = capsule_region(torch.from_numpy(seg_t).to(device), torch.from_numpy(tor_t).to(device), size, tight)
    return (region >= 0.5).float()
