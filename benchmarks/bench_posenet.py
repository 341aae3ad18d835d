"""Pose-network speed: training images/s and inference ms/image at 192 and 384 px.

Rows: PVT v2 b1 (the original's PVT-tiny widths) with posesynth's default heads
("medium") and with the original NADS-Net head widths ("nadsnet-original": 512-channel
3x3 convs at 1/4 resolution), and the small b0 option.  Batch 4, fp32 CPU, random weights.
Reference measured with the original NADS-Net on the same kind of machine: 28.8 s per
training iteration at batch 4 and 384 px (0.14 images/s), 1.5 s inference per image.

    python benchmarks/bench_posenet.py [--iters 2] [--sizes 192,384]
"""
from __future__ import annotations

import argparse
import time

import torch

from posesynth.posenet.losses import PoseLossWeights, pose_loss
from posesynth.posenet.model import PoseNet, PoseNetConfig


def bench(backbone: str, heads: str, size: int, batch: int, iters: int) -> tuple[float, float]:
    torch.manual_seed(0)
    m = PoseNet(PoseNetConfig(9, 8, 1, backbone, "none", heads))
    opt = torch.optim.AdamW(m.parameters(), 1e-3)
    x = torch.rand(batch, 3, size, size) * 2 - 1
    tgt = {"heatmaps": torch.rand(batch, 9, size // 4, size // 4), "pafs": torch.rand(batch, 16, size // 4, size // 4),
           "masks": torch.rand(batch, 1, size, size).round()}
    w = PoseLossWeights(100, 100, 1)

    def step():
        loss, _ = pose_loss(m(x), tgt, w)
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()
    t = time.perf_counter()
    for _ in range(iters):
        step()
    train_ips = batch * iters / (time.perf_counter() - t)
    m.eval()
    with torch.inference_mode():
        one = x[:1]
        m(one)
        t = time.perf_counter()
        for _ in range(iters * 2):
            m(one)
        infer_ms = (time.perf_counter() - t) / (iters * 2) * 1e3
    return train_ips, infer_ms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--sizes", default="192,384")
    a = ap.parse_args()
    print(f"batch {a.batch}, fp32 CPU, {torch.get_num_threads()} threads")
    print(f"{'backbone':<11}{'heads':<18}{'px':>5}{'train img/s':>13}{'vs 0.14':>9}{'infer ms/img':>14}")
    for size in map(int, a.sizes.split(",")):
        for backbone, heads in (("pvt_v2_b1", "medium"), ("pvt_v2_b1", "nadsnet-original"), ("pvt_v2_b0", "small")):
            ips, ms = bench(backbone, heads, size, a.batch, a.iters)
            rel = f"{ips / 0.14:.1f}x" if size == 384 else "-"
            print(f"{backbone:<11}{heads:<18}{size:>5}{ips:>13.2f}{rel:>9}{ms:>14.0f}", flush=True)


if __name__ == "__main__":
    main()
