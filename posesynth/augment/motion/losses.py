"""HP-GAN's losses on normalised pose sequences ``(B, T, J, 2)``."""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["bone_lengths", "bone_loss", "consistency_loss", "gradient_penalty"]


def bone_lengths(seq: torch.Tensor, bones: torch.Tensor) -> torch.Tensor:
    """``(..., J, 2)`` poses and ``(B, 2)`` joint pairs -> ``(..., B)`` lengths."""
    return (seq[..., bones[:, 1], :] - seq[..., bones[:, 0], :]).norm(dim=-1)


def bone_loss(future: torch.Tensor, own: torch.Tensor, bones: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Bone-length loss of ``future (N, T, J, 2)`` against the person's own pose ``own (N, J, 2)``.

    With ``r[n, t, b]`` = length of bone ``b`` in frame ``t`` / its length in ``own``: the
    variance of ``r`` over the frames plus the mean squared deviation ``(r - 1)^2``, each
    averaged over people and bones.  Zero exactly when every frame keeps every bone at the
    person's own length (rigid motion), positive otherwise; scale-free.
    """
    ref = bone_lengths(own, bones).clamp_min(eps).unsqueeze(1)           # (N, 1, B)
    r = bone_lengths(future, bones) / ref                                # (N, T, B)
    var = r.var(dim=1, unbiased=False) if r.shape[1] > 1 else torch.zeros_like(r[:, 0])
    return var.mean() + ((r - 1) ** 2).mean()


def consistency_loss(past_last: torch.Tensor, future: torch.Tensor) -> torch.Tensor:
    """Mean squared displacement between consecutive poses: from the last past pose
    ``(N, J, 2)`` to the first future pose, and along ``future (N, T, J, 2)`` (per joint)."""
    seq = torch.cat([past_last.unsqueeze(1), future], 1)
    return (seq[:, 1:] - seq[:, :-1]).pow(2).sum(-1).mean()


def gradient_penalty(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """WGAN-GP (Gulrajani et al. 2017): mean of ``(||grad critic(x_hat)|| - 1)^2`` at random
    points ``x_hat`` between real and fake sequences (one mixing weight per sequence)."""
    a = torch.rand(real.shape[0], *([1] * (real.dim() - 1)), device=real.device, dtype=real.dtype)
    x = (a * real.detach() + (1 - a) * fake.detach()).requires_grad_(True)
    (g,) = torch.autograd.grad(critic(x).sum(), x, create_graph=True)
    return (g.flatten(1).norm(dim=1) - 1).pow(2).mean()
