"""Stick figures: a pose drawn as coloured limbs and joints on black, the conditioning image
of pix2pix-style generators (as in Everybody Dance Now, which draws OpenPose skeletons).

Each limb of the layout has its own colour (:func:`~posesynth.datasets.visualize.limb_colours`,
the colours ``posesynth show`` uses), so left and right, upper and lower limbs are told
apart; joints are white discs.  Drawing is one vectorised distance computation per batch
(every pixel against every limb segment), anti-aliased over one pixel, in PyTorch so it runs
where the generator runs.

Geometry follows :mod:`~posesynth.datasets.posemaps`: keypoints are in input pixels with
pixel centres at integer coordinates, and output pixel ``i`` has its centre at input
coordinate ``(i + 0.5) * in / out - 0.5``.
"""
from __future__ import annotations

import numpy as np
import torch

from .layouts import KeypointLayout
from .visualize import limb_colours

__all__ = ["render_stick_figures", "stick_figure_images", "default_line_width"]


def default_line_width(size: tuple[int, int]) -> float:
    """Limb width in output pixels for an output of ``(H, W)``: ``H / 48``, at least 2."""
    return max(2.0, min(size) / 48.0)


def _as_tensor(keypoints, device) -> torch.Tensor:
    kp = torch.as_tensor(np.asarray(keypoints) if not torch.is_tensor(keypoints) else keypoints)
    kp = kp.to(device=device, dtype=torch.float32)
    if kp.dim() == 2:        # (K, 3): one person, one image
        kp = kp[None, None]
    elif kp.dim() == 3:      # (P, K, 3): one image
        kp = kp[None]
    if kp.dim() != 4 or kp.shape[-1] != 3:
        raise ValueError(f"keypoints must be (B, P, K, 3), got {tuple(kp.shape)}")
    return kp


def render_stick_figures(keypoints: "torch.Tensor | np.ndarray", layout: KeypointLayout, size: tuple[int, int],
                         in_size: "tuple[int, int] | None" = None, line_width: "float | None" = None,
                         joint_radius: "float | None" = None, device: "str | torch.device | None" = None,
                         chunk: int = 8) -> torch.Tensor:
    """Stick figures of every person of every image.

    Args:
        keypoints: ``(B, P, K, 3)`` ``[x, y, v]`` in pixels of an ``in_size`` image (also
            ``(P, K, 3)`` or ``(K, 3)``); a limb is drawn when both ends have ``v > 0``, a
            joint when ``v > 0``.  ``K == layout.num_keypoints``.
        layout: gives the limbs (and so the colours).
        size: output ``(H, W)``.
        in_size: ``(H, W)`` the coordinates refer to (default: ``size``).
        line_width: limb width in output pixels (default :func:`default_line_width`).
        joint_radius: joint disc radius in output pixels (default ``0.6 * line_width``; 0: none).
        device: where to draw (default: the keypoints' device, else CPU).
        chunk: images drawn at once (bounds memory: ``chunk * L * H * W`` floats).

    Returns:
        ``(B, 3, H, W)`` float32 in [-1, 1]: -1 (black) background, limbs in their colours,
        joints white.  Where limbs cross, the one drawn later in the layout's order is on top.
    """
    if device is None:
        device = keypoints.device if torch.is_tensor(keypoints) else "cpu"
    kp = _as_tensor(keypoints, device)
    b, p, k, _ = kp.shape
    if k != layout.num_keypoints:
        raise ValueError(f"keypoints have {k} points, layout '{layout.name}' has {layout.num_keypoints}")
    h, w = size
    ih, iw = in_size if in_size is not None else size
    lw = float(line_width if line_width is not None else default_line_width(size))
    jr = float(0.6 * lw if joint_radius is None else joint_radius)
    # keypoints in output pixel coordinates
    scale = torch.tensor([w / iw, h / ih], device=device)
    xy = (kp[..., :2] + 0.5) * scale - 0.5                                   # (B, P, K, 2)
    vis = kp[..., 2] > 0                                                      # (B, P, K)
    ys = torch.arange(h, device=device, dtype=torch.float32)
    xs = torch.arange(w, device=device, dtype=torch.float32)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    grid = torch.stack([gx, gy], -1)                                          # (H, W, 2)
    n_l = layout.num_limbs
    cols = torch.tensor(limb_colours(max(n_l, 1)), device=device, dtype=torch.float32) / 127.5 - 1  # (L, 3)
    out = torch.full((b, 3, h, w), -1.0, device=device)
    if p == 0:
        return out
    limbs = torch.as_tensor(layout.limbs, device=device, dtype=torch.long).reshape(-1, 2)
    for s in range(0, b, chunk):
        e = min(s + chunk, b)
        img = out[s:e]                                                         # (c, 3, H, W) view
        if n_l:
            a, bb = xy[s:e][:, :, limbs[:, 0]], xy[s:e][:, :, limbs[:, 1]]     # (c, P, L, 2)
            ok = vis[s:e][:, :, limbs[:, 0]] & vis[s:e][:, :, limbs[:, 1]]     # (c, P, L)
            d = bb - a
            len2 = (d * d).sum(-1).clamp_min(1e-12)                           # (c, P, L)
            rel = grid[None, None, None] - a[..., None, None, :]               # (c, P, L, H, W, 2)
            t = ((rel * d[..., None, None, :]).sum(-1) / len2[..., None, None]).clamp(0, 1)
            dist = (rel - t[..., None] * d[..., None, None, :]).norm(dim=-1)  # (c, P, L, H, W)
            cover = (lw / 2 + 0.5 - dist).clamp(0, 1) * ok[..., None, None]    # anti-aliased coverage
            cover = cover.amax(1)                                               # over people: (c, L, H, W)
            for li in range(n_l):                                              # painter's order (L is small)
                al = cover[:, li:li + 1]
                img.mul_(1 - al).add_(al * cols[li].view(1, 3, 1, 1))
        if jr > 0:
            dj = (grid[None, None, None] - xy[s:e][..., None, None, :]).norm(dim=-1)  # (c, P, K, H, W)
            cj = ((jr + 0.5 - dj).clamp(0, 1) * vis[s:e][..., None, None]).flatten(1, 2).amax(1, keepdim=True)
            img.mul_(1 - cj).add_(cj)
    return out


def stick_figure_images(keypoints: "torch.Tensor | np.ndarray", layout: KeypointLayout, size: tuple[int, int],
                        in_size: "tuple[int, int] | None" = None, **kw) -> np.ndarray:
    """Like :func:`render_stick_figures`, as ``(B, H, W, 3)`` uint8 RGB arrays (for videos)."""
    t = render_stick_figures(keypoints, layout, size, in_size, **kw)
    from .torch_dataset import tensor_to_image

    return tensor_to_image(t)
