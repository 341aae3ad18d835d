"""Pose-network loss: MSE on heatmaps and PAFs, Dice-BCE on the masks (from the network's fp32 mask logits)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..losses import dice_bce_logits

__all__ = ["PoseLossWeights", "pose_loss"]


@dataclass
class PoseLossWeights:
    """Weights of the three terms.  ``reduction="mean"`` averages over elements;
    ``"sum"`` is the original's summed squared error per sample (then mask weight 500)."""

    heatmap: float = 1.0
    paf: float = 1.0
    mask: float = 0.01
    reduction: str = "mean"


def pose_loss(pred: tuple, target: dict[str, torch.Tensor], w: PoseLossWeights) -> tuple[torch.Tensor, dict[str, float]]:
    """``pred`` is the network's output ``(heatmaps, pafs, mask logits or None)``; ``target`` holds
    ``heatmaps``, ``pafs`` and ``masks`` (in [0, 1]), and optionally ``mask_valid`` ``(B, M)`` (1
    where a mask is labelled; unlabelled masks add no loss).  Returns the weighted total and its
    parts."""
    hm, paf, mask = pred
    if w.reduction == "sum":
        n = hm.shape[0]
        l_hm = F.mse_loss(hm, target["heatmaps"], reduction="sum") / n
        l_paf = F.mse_loss(paf, target["pafs"], reduction="sum") / n
    else:
        l_hm = F.mse_loss(hm, target["heatmaps"])
        l_paf = F.mse_loss(paf, target["pafs"])
    l_mask = (dice_bce_logits(mask, target["masks"], valid=target.get("mask_valid"))
              if mask is not None and target["masks"].shape[1] else hm.new_zeros(()))
    total = w.heatmap * l_hm + w.paf * l_paf + w.mask * l_mask
    return total, {"loss": float(total.detach()), "hm": float(l_hm.detach()), "paf": float(l_paf.detach()),
                   "mask": float(l_mask.detach())}
