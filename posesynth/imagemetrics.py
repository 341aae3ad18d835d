"""Image-quality metrics shared by render-quality and evaluate-generator: PSNR and SSIM,
over the whole image or inside a region.

Images are ``(B, 3, H, W)`` tensors in [-1, 1] (posesynth's image scaling) or ``(B, H, W, 3)``
/ ``(H, W, 3)`` uint8 arrays; both are compared on the 0-255 scale.  A region is ``(B, 1, H,
W)`` (or ``(H, W)``) in [0, 1]; pixels are weighted by it, so a soft region counts its
feathered edge partly.  Results are per image, ``(B,)`` float64 NumPy arrays.

SSIM is Wang et al. (2004) with an 11x11 Gaussian window (sigma 1.5), K1 0.01, K2 0.03,
computed per channel on 0-255 values, averaged over channels and over the pixels of the
region (valid-window borders kept, as scikit-image's ``gaussian_weights=True``).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["psnr", "ssim", "to_255"]


def to_255(x: "torch.Tensor | np.ndarray") -> torch.Tensor:
    """``(B, 3, H, W)`` float64 on the 0-255 scale from a [-1, 1] tensor or uint8 HWC array(s)."""
    if isinstance(x, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(x)).double()
        if t.dim() == 3:
            t = t[None]
        return t.permute(0, 3, 1, 2)
    t = x.detach().double().cpu()
    if t.dim() == 3:
        t = t[None]
    return (t.clamp(-1, 1) + 1) * 127.5


def _region(mask, like: torch.Tensor) -> torch.Tensor:
    b, _, h, w = like.shape
    if mask is None:
        return torch.ones(b, 1, h, w, dtype=torch.float64)
    m = torch.as_tensor(np.asarray(mask) if isinstance(mask, np.ndarray) else mask.detach().cpu()).double()
    while m.dim() < 4:
        m = m[None]
    if m.shape[1] != 1:
        m = m.amax(1, keepdim=True)
    return m.expand(b, 1, h, w)


def psnr(a, b, mask=None, peak: float = 255.0) -> np.ndarray:
    """Peak signal-to-noise ratio in dB per image (inside ``mask`` when given; ``nan`` where the
    region is empty, ``inf`` where the images agree exactly)."""
    x, y = to_255(a), to_255(b)
    m = _region(mask, x)
    se = ((x - y) ** 2 * m).sum((1, 2, 3))
    n = m.sum((1, 2, 3)) * x.shape[1]
    mse = se / n.clamp_min(1e-12)
    out = 10 * torch.log10(peak ** 2 / mse)
    out = torch.where(n > 0, out, torch.full_like(out, float("nan")))
    return out.numpy()


def _gauss(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    g = torch.exp(-0.5 * ((torch.arange(size, dtype=torch.float64) - size // 2) / sigma) ** 2)
    return g / g.sum()


def ssim(a, b, mask=None, peak: float = 255.0) -> np.ndarray:
    """Structural similarity per image (mean of the SSIM map inside ``mask`` when given)."""
    x, y = to_255(a), to_255(b)
    c = x.shape[1]
    g = _gauss()
    k = (g[:, None] * g[None, :])[None, None].repeat(c, 1, 1, 1)
    pad = g.numel() // 2

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(t, (pad,) * 4, mode="reflect"), k, groups=c)

    mx, my = blur(x), blur(y)
    sxx = blur(x * x) - mx ** 2
    syy = blur(y * y) - my ** 2
    sxy = blur(x * y) - mx * my
    c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2
    smap = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (sxx + syy + c2))
    smap = smap.mean(1, keepdim=True)
    m = _region(mask, x)
    n = m.sum((1, 2, 3))
    out = (smap * m).sum((1, 2, 3)) / n.clamp_min(1e-12)
    out = torch.where(n > 0, out, torch.full_like(out, float("nan")))
    return out.numpy()
