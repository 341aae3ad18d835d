"""Losses shared by the GAN and the pose network."""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["dice_bce_logits"]


def dice_bce_logits(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0,
                    valid: "torch.Tensor | None" = None) -> torch.Tensor:
    """Dice + binary cross-entropy for a mask, from logits.

    Both terms are computed in float32 from the logits: BCE with logits (never saturates: a
    logit of +20 on a background pixel has gradient ~1) and Dice on ``sigmoid(logits)``.  No
    clamping, so no gradient is cut off where the prediction is most wrong.  A non-finite
    logit gives a NaN loss (for the trainer's all-rank finite check), not an exception.

    Args:
        logits: ``(B, M, H, W)`` mask logits (any float dtype; cast to float32).
        target: same shape, in [0, 1].
        valid: optional ``(B, M)``, 1 where the sample's mask channel is labelled: the loss is
            averaged over those (sample, channel) pairs only, and is 0 (with a zero gradient)
            when there is none.  An unlabelled mask (a dataset without seatbelt masks) says
            nothing about the pixels, so it must not teach "no seatbelt".
    Returns:
        scalar: ``BCE + (1 - Dice)``, the Dice computed per sample and channel, then averaged.
    """
    x = logits.float()
    t = target.float()
    p = torch.sigmoid(x)
    inter = (p * t).flatten(2).sum(-1)
    dice = (2 * inter + smooth) / (p.flatten(2).sum(-1) + t.flatten(2).sum(-1) + smooth)   # (B, M)
    bce = F.binary_cross_entropy_with_logits(x, t, reduction="none").flatten(2).mean(-1)   # (B, M)
    if valid is None:   # every (sample, channel) has the same pixel count: the plain means
        return bce.mean() + (1 - dice).mean()
    w = (valid > 0).float().reshape(x.shape[:2])
    return ((bce + 1 - dice) * w).sum() / w.sum().clamp_min(1.0)   # none labelled: 0, zero gradient
