"""Pose maps: Gaussian keypoint heatmaps, Part Affinity Fields and masks.

Geometry.  Keypoints are in input pixels with pixel centres at integer coordinates.  An
output grid of size ``(h, w)`` for an input of size ``(H, W)`` has scale ``s = (w / W,
h / H)``; output pixel ``i`` has its centre at input coordinate ``(i + 0.5) / s - 0.5``
(the ``align_corners=False`` convention of ``torch.nn.functional.interpolate``).  The
Gaussian sigma and the PAF half-width are given in **input pixels** and scaled with the
grid, so the same pose gives the same maps (up to resolution) at 384 and at 96.

Channel order (see :class:`~posesynth.datasets.layouts.KeypointLayout`): ``K`` heatmaps,
``2L`` PAF components (x, y for each limb), ``M`` masks.

Everything is vectorised: each keypoint and each limb touches only the window of output
pixels it can affect, computed with whole-array NumPy operations.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

from .layouts import KeypointLayout

if TYPE_CHECKING:  # torch is imported where the batched (torch) maps are drawn
    import torch

__all__ = ["PoseMapSpec", "rescale_keypoints", "render_heatmaps", "render_pafs", "resize_masks", "render_pose_maps",
           "render_heatmaps_torch", "render_pafs_torch", "render_pose_maps_torch",
           "to_grid", "from_grid"]


@dataclass(frozen=True)
class PoseMapSpec:
    """How pose maps are drawn: one object per run, saved in its checkpoints (``posemaps``) and
    read back by every consumer (mixer, generate, render, evaluate, the GAN's judge), never
    rebuilt from defaults.

    Attributes:
        sigma: Gaussian standard deviation in input pixels.
        paf_width: half-width of a limb's PAF band in input pixels (distance from the
            limb's axis within which vectors are written).
        stride: the pose targets' output stride (heatmaps and PAFs at ``size / stride``).
        size: the network input ``(H, W)`` the maps are drawn for (``None``: not fixed).
    """

    sigma: float = 7.0
    paf_width: float = 8.0
    stride: int = 4
    size: "tuple[int, int] | None" = None

    @property
    def target_size(self) -> "tuple[int, int] | None":
        """``(H / stride, W / stride)``, the heatmap/PAF resolution."""
        return None if self.size is None else (self.size[0] // self.stride, self.size[1] // self.stride)

    def to_dict(self) -> dict:
        return {"sigma": float(self.sigma), "paf_width": float(self.paf_width), "stride": int(self.stride),
                "size": list(self.size) if self.size else None}

    @classmethod
    def from_dict(cls, d: dict) -> "PoseMapSpec":
        return cls(float(d.get("sigma", 7.0)), float(d.get("paf_width", 8.0)), int(d.get("stride", 4)),
                   tuple(d["size"]) if d.get("size") else None)

    @classmethod
    def from_meta(cls, meta: dict) -> "PoseMapSpec":
        """The spec a checkpoint records (older checkpoints: from their config)."""
        if "posemaps" in meta:
            return cls.from_dict(meta["posemaps"])
        c = meta.get("config", {})
        return cls(float(meta.get("sigma", c.get("sigma", 7.0))), float(meta.get("paf_width", c.get("paf_width", 8.0))),
                   4, tuple(c["size"]) if c.get("size") else None)

    def same_maps(self, other: "PoseMapSpec") -> bool:
        """Whether two runs draw the same maps (sigma, PAF width, stride)."""
        return (abs(self.sigma - other.sigma) < 1e-9 and abs(self.paf_width - other.paf_width) < 1e-9
                and self.stride == other.stride)


def to_grid(xy: np.ndarray, in_size: tuple[int, int], out_size: tuple[int, int]) -> np.ndarray:
    """Map ``(..., 2)`` input-pixel coordinates to an output grid (sizes are ``(H, W)``)."""
    s = np.array([out_size[1] / in_size[1], out_size[0] / in_size[0]], np.float32)
    return (np.asarray(xy, np.float32) + 0.5) * s - 0.5


def rescale_keypoints(keypoints: np.ndarray, from_size: tuple[int, int], to_size: tuple[int, int]) -> np.ndarray:
    """A copy of ``(..., 3)`` keypoints ``[x, y, v]`` in pixels of a ``from_size`` ``(H, W)``
    image, moved to the pixels of the same image resized to ``to_size`` (pixel centres at
    integers: ``x' = (x + 0.5) * W' / W - 0.5``); ``v`` is kept."""
    kp = np.array(keypoints, np.float32, copy=True)
    if tuple(from_size) != tuple(to_size):
        kp[..., :2] = to_grid(kp[..., :2], tuple(from_size), tuple(to_size))
    return kp


def from_grid(xy: np.ndarray, in_size: tuple[int, int], out_size: tuple[int, int]) -> np.ndarray:
    """Inverse of :func:`to_grid`: output-grid coordinates back to input pixels."""
    s = np.array([out_size[1] / in_size[1], out_size[0] / in_size[0]], np.float32)
    return (np.asarray(xy, np.float32) + 0.5) / s - 0.5


def render_heatmaps(keypoints: np.ndarray, in_size: tuple[int, int], out_size: tuple[int, int],
                    sigma: float = 7.0) -> np.ndarray:
    """Gaussian heatmaps, the maximum over people.

    Args:
        keypoints: ``(P, K, 3)`` ``[x, y, v]`` in input pixels; ``v == 0`` draws nothing.
        in_size, out_size: ``(H, W)`` of the input image and the output grid.
        sigma: standard deviation in input pixels (scaled per axis to the grid).

    Returns:
        ``(K, h, w)`` float32 in [0, 1], peak 1 at each labelled keypoint.
    """
    kp = np.asarray(keypoints, np.float32).reshape(-1, *np.shape(keypoints)[-2:])
    h, w = out_size
    k = kp.shape[1]
    out = np.zeros((k, h, w), np.float32)
    sx = sigma * w / in_size[1]
    sy = sigma * h / in_size[0]
    rx, ry = int(np.ceil(3 * sx)), int(np.ceil(3 * sy))
    grid = to_grid(kp[..., :2], in_size, out_size)
    for p, j in zip(*np.nonzero(kp[..., 2] > 0)):
        cx, cy = grid[p, j]
        x0, x1 = max(int(np.floor(cx)) - rx, 0), min(int(np.ceil(cx)) + rx + 1, w)
        y0, y1 = max(int(np.floor(cy)) - ry, 0), min(int(np.ceil(cy)) + ry + 1, h)
        if x0 >= x1 or y0 >= y1:
            continue
        gx = np.exp(-0.5 * ((np.arange(x0, x1, dtype=np.float32) - cx) / sx) ** 2)
        gy = np.exp(-0.5 * ((np.arange(y0, y1, dtype=np.float32) - cy) / sy) ** 2)
        win = out[j, y0:y1, x0:x1]
        np.maximum(win, gy[:, None] * gx[None, :], out=win)
    return out


def render_pafs(keypoints: np.ndarray, limbs: "list[tuple[int, int]] | tuple", in_size: tuple[int, int],
                out_size: tuple[int, int], width: float = 8.0) -> np.ndarray:
    """Part Affinity Fields: unit vectors along each limb within ``width`` input pixels.

    A pixel belongs to limb ``a -> b`` when its projection on the limb's axis falls within
    the segment and its distance from the axis is at most ``width`` (both measured in input
    pixels).  The vector written is the limb's direction in the output grid, normalised.
    Where the same limb of several people overlaps, vectors are averaged.

    Args:
        keypoints: ``(P, K, 3)`` in input pixels; a limb is drawn only when both ends have
            ``v > 0``.
        limbs: ``L`` pairs of keypoint indices.

    Returns:
        ``(2L, h, w)`` float32; channel ``2l`` is x, ``2l + 1`` is y; each vector has length
        1 (or is 0 outside every limb, and possibly shorter where opposite vectors average).
    """
    kp = np.asarray(keypoints, np.float32).reshape(-1, *np.shape(keypoints)[-2:])
    h, w = out_size
    n_limbs = len(limbs)
    acc = np.zeros((n_limbs, 2, h, w), np.float32)
    count = np.zeros((n_limbs, h, w), np.float32)
    if n_limbs == 0 or kp.shape[0] == 0:
        return acc.reshape(2 * n_limbs, h, w)
    scale = np.array([w / in_size[1], h / in_size[0]], np.float32)
    limb_idx = np.asarray(limbs, np.int64)
    a_all, b_all = kp[:, limb_idx[:, 0]], kp[:, limb_idx[:, 1]]          # (P, L, 3)
    valid = (a_all[..., 2] > 0) & (b_all[..., 2] > 0)
    pad = width * scale  # band half-width in grid pixels per axis
    for p, li in zip(*np.nonzero(valid)):
        a, b = a_all[p, li, :2], b_all[p, li, :2]
        d_in = b - a
        length = float(np.hypot(*d_in))
        if length < 1e-6:
            continue
        u_in = d_in / length
        ga, gb = (a + 0.5) * scale - 0.5, (b + 0.5) * scale - 0.5
        lo = np.floor(np.minimum(ga, gb) - pad).astype(int)
        hi = np.ceil(np.maximum(ga, gb) + pad).astype(int) + 1
        x0, y0 = max(lo[0], 0), max(lo[1], 0)
        x1, y1 = min(hi[0], w), min(hi[1], h)
        if x0 >= x1 or y0 >= y1:
            continue
        # window pixel centres in input coordinates
        xs = (np.arange(x0, x1, dtype=np.float32) + 0.5) / scale[0] - 0.5 - a[0]
        ys = (np.arange(y0, y1, dtype=np.float32) + 0.5) / scale[1] - 0.5 - a[1]
        along = ys[:, None] * u_in[1] + xs[None, :] * u_in[0]
        across = np.abs(ys[:, None] * u_in[0] - xs[None, :] * u_in[1])
        inside = (along >= 0) & (along <= length) & (across <= width)
        g = gb - ga
        u = g / max(float(np.hypot(*g)), 1e-12)
        acc[li, 0, y0:y1, x0:x1] += inside * u[0]
        acc[li, 1, y0:y1, x0:x1] += inside * u[1]
        count[li, y0:y1, x0:x1] += inside
    np.divide(acc, count[:, None], out=acc, where=count[:, None] > 0)
    return acc.reshape(2 * n_limbs, h, w)


def resize_masks(masks: np.ndarray, out_size: tuple[int, int]) -> np.ndarray:
    """``(M, H, W)`` {0,1} masks to ``(M, h, w)`` float32 coverage in [0, 1] (area averaging)."""
    m = np.asarray(masks)
    h, w = out_size
    if m.shape[0] == 0:
        return np.zeros((0, h, w), np.float32)
    if m.shape[1:] == (h, w):
        return m.astype(np.float32)
    interp = cv2.INTER_AREA if (h <= m.shape[1] and w <= m.shape[2]) else cv2.INTER_LINEAR
    planes = np.ascontiguousarray(m.transpose(1, 2, 0).astype(np.float32))
    out = cv2.resize(planes, (w, h), interpolation=interp)
    return np.clip(out.reshape(h, w, -1).transpose(2, 0, 1), 0.0, 1.0)


def render_pose_maps(keypoints: np.ndarray, layout: KeypointLayout, in_size: tuple[int, int],
                     out_size: tuple[int, int], masks: "np.ndarray | None" = None,
                     spec: PoseMapSpec = PoseMapSpec()) -> np.ndarray:
    """All pose-map channels for one image: heatmaps, PAFs and masks.

    Args:
        keypoints: ``(P, K, 3)`` in input pixels, ``K == layout.num_keypoints``.
        masks: ``(M, H, W)`` {0, 1} with ``M == layout.num_masks``; ``None`` gives zero masks.

    Returns:
        ``(layout.num_channels, h, w)`` float32 (26 channels for driver9).
    """
    parts = [render_heatmaps(keypoints, in_size, out_size, spec.sigma),
             render_pafs(keypoints, layout.limbs, in_size, out_size, spec.paf_width)]
    if layout.num_masks:
        if masks is None or len(masks) == 0:
            parts.append(np.zeros((layout.num_masks,) + tuple(out_size), np.float32))
        else:
            parts.append(resize_masks(masks, out_size))
    return np.concatenate(parts, axis=0)


# ---- the same maps, batched in torch on any device -------------------------------------------
def render_heatmaps_torch(keypoints: "torch.Tensor", in_size: tuple[int, int], out_size: tuple[int, int],
                          sigma: float = 7.0) -> "torch.Tensor":
    """Batched :func:`render_heatmaps` (same values, same 3-sigma window).

    Args:
        keypoints: ``(B, P, K, 3)`` in input pixels, on the device the maps are wanted on.
    Returns:
        ``(B, K, h, w)`` float32, the maximum over people.
    """
    import torch

    kp = keypoints.float()
    b, p, k, _ = kp.shape
    h, w = out_size
    dev = kp.device
    sx, sy = sigma * w / in_size[1], sigma * h / in_size[0]
    rx, ry = int(np.ceil(3 * sx)), int(np.ceil(3 * sy))
    cx = (kp[..., 0] + 0.5) * (w / in_size[1]) - 0.5                      # (B, P, K)
    cy = (kp[..., 1] + 0.5) * (h / in_size[0]) - 0.5
    xs = torch.arange(w, device=dev, dtype=torch.float32)
    ys = torch.arange(h, device=dev, dtype=torch.float32)

    def axis(c: "torch.Tensor", grid: "torch.Tensor", s: float, r: int) -> "torch.Tensor":
        g = torch.exp(-0.5 * ((grid - c[..., None]) / s) ** 2)
        lo, hi = torch.floor(c)[..., None] - r, torch.ceil(c)[..., None] + r + 1
        return g * ((grid >= lo) & (grid < hi))

    gx = axis(cx, xs, sx, rx) * (kp[..., 2] > 0)[..., None]               # (B, P, K, w)
    gy = axis(cy, ys, sy, ry)                                              # (B, P, K, h)
    if p == 0:
        return torch.zeros(b, k, h, w, device=dev)
    return (gy[..., :, None] * gx[..., None, :]).amax(1)


def render_pafs_torch(keypoints: "torch.Tensor", limbs, in_size: tuple[int, int], out_size: tuple[int, int],
                      width: float = 8.0) -> "torch.Tensor":
    """Batched :func:`render_pafs` (same band, same averaging over people).

    Args:
        keypoints: ``(B, P, K, 3)`` in input pixels.
    Returns:
        ``(B, 2L, h, w)`` float32.
    """
    import torch

    kp = keypoints.float()
    b = kp.shape[0]
    h, w = out_size
    n_l = len(limbs)
    dev = kp.device
    if n_l == 0 or kp.shape[1] == 0:
        return torch.zeros(b, 2 * n_l, h, w, device=dev)
    li = torch.as_tensor(np.asarray(limbs, np.int64), device=dev)
    a, c = kp[:, :, li[:, 0]], kp[:, :, li[:, 1]]                          # (B, P, L, 3)
    valid = (a[..., 2] > 0) & (c[..., 2] > 0)
    d = c[..., :2] - a[..., :2]
    length = torch.linalg.vector_norm(d, dim=-1)
    valid &= length >= 1e-6
    u_in = d / length.clamp_min(1e-12)[..., None]
    scale = torch.tensor([w / in_size[1], h / in_size[0]], device=dev)
    g = d * scale
    u = g / torch.linalg.vector_norm(g, dim=-1).clamp_min(1e-12)[..., None]
    xs = (torch.arange(w, device=dev, dtype=torch.float32) + 0.5) / scale[0] - 0.5
    ys = (torch.arange(h, device=dev, dtype=torch.float32) + 0.5) / scale[1] - 0.5
    px = xs.view(1, 1, 1, 1, w) - a[..., 0, None, None]
    py = ys.view(1, 1, 1, h, 1) - a[..., 1, None, None]
    along = py * u_in[..., 1, None, None] + px * u_in[..., 0, None, None]
    across = (py * u_in[..., 0, None, None] - px * u_in[..., 1, None, None]).abs()
    inside = ((along >= 0) & (along <= length[..., None, None]) & (across <= width) & valid[..., None, None]).float()
    count = inside.sum(1)                                                  # (B, L, h, w)
    vx = (inside * u[..., 0, None, None]).sum(1) / count.clamp_min(1)
    vy = (inside * u[..., 1, None, None]).sum(1) / count.clamp_min(1)
    return torch.stack([vx, vy], 2).reshape(b, 2 * n_l, h, w)


def render_pose_maps_torch(keypoints: "torch.Tensor", layout: KeypointLayout, in_size: tuple[int, int],
                           out_size: tuple[int, int], masks: "torch.Tensor | None" = None,
                           spec: PoseMapSpec = PoseMapSpec()) -> "torch.Tensor":
    """Batched :func:`render_pose_maps`: ``(B, C, h, w)`` from ``(B, P, K, 3)`` keypoints and
    ``(B, M, H, W)`` masks in [0, 1] (resized by area averaging, as the NumPy path)."""
    import torch
    import torch.nn.functional as F

    parts = [render_heatmaps_torch(keypoints, in_size, out_size, spec.sigma),
             render_pafs_torch(keypoints, layout.limbs, in_size, out_size, spec.paf_width)]
    if layout.num_masks:
        b = keypoints.shape[0]
        if masks is None or masks.shape[1] == 0:
            parts.append(torch.zeros(b, layout.num_masks, *out_size, device=keypoints.device))
        else:
            m = masks.float().to(keypoints.device)
            if tuple(m.shape[-2:]) != tuple(out_size):
                down = out_size[0] <= m.shape[-2] and out_size[1] <= m.shape[-1]
                m = F.interpolate(m, size=out_size, mode="area" if down else "bilinear",
                                  align_corners=None if down else False).clamp(0, 1)
            parts.append(m)
    return torch.cat(parts, 1)
