"""NADS-Net-style pose network: PVT backbone, FPN, heatmap/PAF heads at 1/4 resolution and a
seatbelt segmentation head at full resolution.

``PoseNet(image) -> (heatmaps (B, K, H/4, W/4), pafs (B, 2L, H/4, W/4), mask_logits (B, M, H, W))``
with the image in [-1, 1].  The mask comes as float32 *logits*, whatever the autocast dtype:
losses take them as they are (BCE-with-logits, :func:`posesynth.losses.dice_bce_logits`), and
consumers that want probabilities apply ``torch.sigmoid`` (:func:`mask_probabilities`).  A
sigmoid inside the network under bf16 autocast rounds every logit above about 8 to exactly
1.0, where the loss then has no gradient.  This is also the interface the GAN's
pose-consistency loss expects of its judge.

The FPN uses each of the four levels exactly once (the original used one level twice and
dropped another): lateral 1x1 convs, a top-down pathway, 3x3 smoothing, then all four
outputs upsampled to 1/4 and fused by concatenation and a 3x3 conv.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import PVTBackbone

__all__ = ["PoseNetConfig", "PoseNet", "FPN", "NAMED_HEADS", "mask_probabilities"]

# head presets: (FPN width, heatmap/PAF head width, head depth, seatbelt head width)
NAMED_HEADS = {
    "small": (96, 96, 2, 32),
    "medium": (128, 128, 3, 32),
    "nadsnet-original": (256, 512, 3, 64),  # the original's 512-channel 3x3 convs at 1/4
}


@dataclass
class PoseNetConfig:
    num_keypoints: int = 9
    num_limbs: int = 8
    num_masks: int = 1
    backbone: str = "pvt_v2_b1"
    pretrained: str = "auto"
    heads: str = "medium"


def mask_probabilities(logits: "torch.Tensor | None") -> "torch.Tensor | None":
    """``(B, M, H, W)`` mask probabilities in [0, 1] (float32) from the network's mask logits."""
    return torch.sigmoid(logits.float()) if logits is not None else None


def conv_bn_relu(cin: int, cout: int, k: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class FPN(nn.Module):
    """Feature pyramid over four levels, fused at the finest (stride 4)."""

    def __init__(self, in_channels: list[int], width: int) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in in_channels)
        self.smooth = nn.ModuleList(conv_bn_relu(width, width) for _ in in_channels)
        self.fuse = conv_bn_relu(width * len(in_channels), width)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        assert len(feats) == len(self.lateral), "one feature map per level"
        lat = [l(f) for l, f in zip(self.lateral, feats)]
        for i in range(len(lat) - 2, -1, -1):  # top-down
            lat[i] = lat[i] + F.interpolate(lat[i + 1], size=lat[i].shape[-2:], mode="nearest")
        outs = [s(x) for s, x in zip(self.smooth, lat)]
        size = outs[0].shape[-2:]
        ups = [outs[0]] + [F.interpolate(o, size=size, mode="bilinear", align_corners=False) for o in outs[1:]]
        return self.fuse(torch.cat(ups, 1))


def _head(cin: int, width: int, depth: int, cout: int) -> nn.Sequential:
    layers = [conv_bn_relu(cin if i == 0 else width, width) for i in range(depth)]
    return nn.Sequential(*layers, nn.Conv2d(width, cout, 1))


class PoseNet(nn.Module):
    def __init__(self, cfg: PoseNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        if cfg.heads not in NAMED_HEADS:
            raise ValueError(f"heads must be one of {list(NAMED_HEADS)}")
        fpn_w, head_w, depth, seg_w = NAMED_HEADS[cfg.heads]
        self.backbone = PVTBackbone(cfg.backbone, cfg.pretrained)
        self.fpn = FPN(self.backbone.channels, fpn_w)
        self.heatmap_head = _head(fpn_w, head_w, depth, cfg.num_keypoints)
        self.paf_head = _head(fpn_w, head_w, depth, 2 * cfg.num_limbs)
        self.num_masks = cfg.num_masks
        if cfg.num_masks:
            # 1/4 -> 1/2 -> 1/1 with the stride-4 backbone features' detail
            self.seg_up1 = conv_bn_relu(fpn_w, seg_w)
            self.seg_up2 = conv_bn_relu(seg_w, seg_w)
            self.seg_out = nn.Conv2d(seg_w, cfg.num_masks, 1)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, "torch.Tensor | None"]:
        feats = self.backbone(image)
        x = self.fpn(feats)
        hm = self.heatmap_head(x)
        paf = self.paf_head(x)
        mask = None
        if self.num_masks:
            s = F.interpolate(self.seg_up1(x), scale_factor=2, mode="bilinear", align_corners=False)
            s = F.interpolate(self.seg_up2(s), size=image.shape[-2:], mode="bilinear", align_corners=False)
            mask = self.seg_out(s).float()  # logits, fp32 under any autocast: no sigmoid here
        return hm, paf, mask
