"""Losses shared by the GAN and the pose network."""
from __future__ import annotations

import torch

__all__ = ["dice_bce"]


def dice_bce(prob: torch.Tensor, target: torch.Tensor, smooth: float = 1.0, eps: float = 1e-6) -> torch.Tensor:
    """Dice + binary cross-entropy for a mask.

    Args:
        prob: ``(B, M, H, W)`` predicted probabilities in [0, 1] (after a sigmoid).
        target: same shape, in [0, 1].
    Returns:
        scalar: ``BCE + (1 - Dice)``, the Dice computed per sample and channel, then averaged.
    """
    p = prob.float().clamp(eps, 1 - eps)
    t = target.float()
    # written out rather than F.binary_cross_entropy, which raises on NaN: a non-finite
    # prediction must reach the trainer's all-rank finite check as a NaN loss, not an exception
    bce = -(t * p.log() + (1 - t) * (1 - p).log()).mean()
    inter = (p * t).flatten(2).sum(-1)
    dice = (2 * inter + smooth) / (p.flatten(2).sum(-1) + t.flatten(2).sum(-1) + smooth)
    return bce + (1 - dice).mean()
