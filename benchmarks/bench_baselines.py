"""Speed of the classic generators (issue 13 baselines): one training iteration (G step with
L1 x 100 + hinge GAN loss through the 70x70 PatchGAN, then the D step), generator inference,
stick-figure rendering, and nearest-neighbour retrieval.  One thread, fp32 CPU, batch 2.

    python benchmarks/bench_baselines.py [--size 256,128] [--iters 3]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F


def _time(fn, iters: int) -> float:
    fn()  # warm-up
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t0) / iters


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="256,128", help="H,W")
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--ngf", type=int, default=64)
    a = ap.parse_args()
    torch.set_num_threads(1)
    from posesynth.datasets.layouts import COCO17
    from posesynth.datasets.stickfigure import render_stick_figures
    from posesynth.spade.baselines import build_discriminator, build_generator, d_condition, generator_input
    from posesynth.spade.losses import gan_loss
    from posesynth.spade.nearest import NearestNeighbourGenerator

    size = tuple(int(v) for v in a.size.split(","))
    b = a.batch
    g = torch.Generator().manual_seed(0)
    kp = torch.zeros(b, 1, 17, 3)
    kp[..., 0] = torch.rand(b, 1, 17, generator=g) * (size[1] - 1)
    kp[..., 1] = torch.rand(b, 1, 17, generator=g) * (size[0] - 1)
    kp[..., 2] = 2
    batch = {"image": torch.rand(b, 3, *size, generator=g) * 2 - 1, "keypoints": kp}
    print(f"size {size[0]}x{size[1]}, batch {b}, ngf {a.ngf}, 1 thread")
    print(f"{'what':<34}{'params':>10}{'train s/it':>12}{'infer ms/img':>14}")
    t = _time(lambda: render_stick_figures(kp, COCO17, size), a.iters)
    print(f"{'stick figures':<34}{'':>10}{'':>12}{t / b * 1e3:>14.1f}")
    for arch, netg in [("pix2pix", "unet"), ("pix2pix", "resnet"), ("vanilla", "")]:
        torch.manual_seed(0)
        G = build_generator(arch, COCO17, size, ngf=a.ngf, netg=netg or "unet")
        D = build_discriminator(arch, COCO17)
        og = torch.optim.Adam(G.parameters(), 2e-4, betas=(0.5, 0.999))
        od = torch.optim.Adam(D.parameters(), 2e-4, betas=(0.5, 0.999))

        def step() -> None:
            x = generator_input(arch, batch, COCO17)
            c = d_condition(arch, batch, COCO17, x)
            fake = G(x)
            D.requires_grad_(False)
            lg = gan_loss(D(torch.cat([c, fake], 1)), True, "hinge", False) + 100 * F.l1_loss(fake, batch["image"])
            og.zero_grad()
            lg.backward()
            og.step()
            D.requires_grad_(True)
            ld = (gan_loss(D(torch.cat([c, fake.detach()], 1)), False, "hinge")
                  + gan_loss(D(torch.cat([c, batch["image"]], 1)), True, "hinge"))
            od.zero_grad()
            ld.backward()
            od.step()

        ts = _time(step, a.iters)
        G.eval()
        x = generator_input(arch, batch, COCO17)
        with torch.no_grad():
            ti = _time(lambda: G(x), a.iters)
        n = sum(p.numel() for p in G.parameters())
        print(f"{arch + (' ' + netg if netg else ''):<34}{n / 1e6:>9.1f}M{ts:>12.2f}{ti / b * 1e3:>14.1f}")
    frames = np.zeros((48, *size, 3), np.uint8)
    kps = np.random.default_rng(0).uniform(0, min(size) - 1, (48, 1, 17, 3)).astype(np.float32)
    kps[..., 2] = 2
    nn_g = NearestNeighbourGenerator(frames, kps, COCO17)
    t = _time(lambda: nn_g(kp), a.iters)
    print(f"{'nearest (48 frames)':<34}{'':>10}{'none':>12}{t / b * 1e3:>14.2f}")


if __name__ == "__main__":
    main()
