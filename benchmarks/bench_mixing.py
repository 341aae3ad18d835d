"""GAN-in-the-loop cost: the mixed training step (half the batch generated) against the plain
step, on the same device.  Target: mixed <= 1.5x plain.

    python benchmarks/bench_mixing.py [--size 128] [--batch 8] [--iters 3]
"""
from __future__ import annotations

import argparse
import time

import torch

from posesynth.augment.mixing import GANBatchMixer
from posesynth.datasets.layouts import DRIVER9
from posesynth.datasets.synthetic import render_scene, scene_rng
from posesynth.datasets.torch_dataset import sample_to_tensors
from posesynth.posenet.losses import PoseLossWeights, pose_loss
from posesynth.posenet.model import PoseNet, PoseNetConfig
from posesynth.spade.generator import GeneratorConfig, SPADEGenerator


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = ap.parse_args()
    dev = a.device
    items = [sample_to_tensors(render_scene(scene_rng(0, i), a.size), DRIVER9, with_maps=False) for i in range(a.batch)]
    batch = {k: torch.stack([it[k] for it in items]).to(dev) for k in ("image", "heatmaps", "pafs", "masks", "keypoints")}
    w = PoseLossWeights(100, 100, 1)
    print(f"{a.size} px, batch {a.batch}, device {dev}; generator renders half of each batch")
    print(f"{'pose network':<28}{'generator':<12}{'plain s/step':>13}{'mixed s/step':>13}{'ratio':>8}{'mix only':>10}")
    for backbone, heads in (("pvt_v2_b0", "small"), ("pvt_v2_b1", "medium")):
        for ngf in (16, 32):
            torch.manual_seed(0)
            net = PoseNet(PoseNetConfig(9, 8, 1, backbone, "none", heads)).to(dev)
            opt = torch.optim.AdamW(net.parameters(), 1e-3)
            g = SPADEGenerator(GeneratorConfig(26, (a.size, a.size), ngf)).to(dev)
            mixer = GANBatchMixer(g, DRIVER9, 0.5, gan_device=dev, device=dev)

            def step(b):
                loss, _ = pose_loss(net(b["image"]), b, w)
                opt.zero_grad()
                loss.backward()
                opt.step()

            def timed(fn):
                fn(0)
                if dev.startswith("cuda"):
                    torch.cuda.synchronize()
                t = time.perf_counter()
                for i in range(a.iters):
                    fn(i + 1)
                if dev.startswith("cuda"):
                    torch.cuda.synchronize()
                return (time.perf_counter() - t) / a.iters

            plain = timed(lambda i: step(batch))
            mixed = timed(lambda i: step(mixer(batch, i)))
            mix_only = timed(lambda i: mixer(batch, i))
            print(f"{backbone + ' / ' + heads:<28}{'ngf ' + str(ngf):<12}{plain:>13.3f}{mixed:>13.3f}"
                  f"{mixed / plain:>7.2f}x{mix_only:>10.3f}", flush=True)


if __name__ == "__main__":
    main()
