"""Cost of in-loop augmentation: the mixed training step (half of every batch rendered from
perturbed poses) against the plain step on one device, for each renderer.

The plain step already includes the post-mix resize and translation that every condition
gets (labels re-rendered in torch on the device), so the ratio is the renderer's own cost.
The warp is timed on one thread and on its default, one thread per core (the images of a
batch rendered at once).  Targets (issue 11): mixed at most 1.3x plain on a GPU with an ngf-64 generator at 256 px;
the CPU figure is reported too.

    python benchmarks/bench_mixing.py [--size 128] [--batch 8] [--iters 3] [--ngf 16,32,64]
    python benchmarks/bench_mixing.py --device cuda --size 256 --ngf 64      # the GPU target
"""
from __future__ import annotations

import argparse
import time

import torch

from posesynth.augment.mixing import BatchMixer
from posesynth.augment.renderers import GANRenderer, WarpRenderer
from posesynth.datasets.layouts import DRIVER9
from posesynth.datasets.posemaps import PoseMapSpec
from posesynth.datasets.synthetic import render_scene, scene_rng
from posesynth.datasets.torch_dataset import sample_to_tensors
from posesynth.posenet.losses import PoseLossWeights, pose_loss
from posesynth.posenet.model import PoseNet, PoseNetConfig
from posesynth.runs import Precision
from posesynth.spade.generator import GeneratorConfig, SPADEGenerator


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--ngf", default="16,32")
    ap.add_argument("--backbones", default="pvt_v2_b0:small,pvt_v2_b1:medium")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = ap.parse_args()
    dev = torch.device(a.device)
    prec = Precision(a.precision, dev)
    items = [sample_to_tensors(render_scene(scene_rng(0, i), a.size), DRIVER9, max_people=2, with_maps=False)
             for i in range(a.batch)]
    batch = {k: torch.stack([it[k] for it in items]).to(dev) for k in ("image", "heatmaps", "pafs", "masks", "keypoints")}
    w = PoseLossWeights(100, 100, 1)
    spec = PoseMapSpec(size=(a.size, a.size))
    print(f"{a.size} px, batch {a.batch}, {dev}, {prec.name}; half of each batch rendered (arms-angle)")
    print(f"{'pose network':<26}{'renderer':<20}{'plain s/step':>13}{'mixed s/step':>13}{'ratio':>8}{'mixer only':>12}")

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    for spec_bb in a.backbones.split(","):
        backbone, heads = spec_bb.split(":")
        torch.manual_seed(0)
        net = PoseNet(PoseNetConfig(9, 8, 1, backbone, "none", heads)).to(dev)
        if dev.type == "cuda":
            net.to(memory_format=torch.channels_last)
        opt = torch.optim.AdamW(net.parameters(), 1e-3)

        def step(b):
            with prec.autocast():
                loss, _ = pose_loss(net(b["image"]), b, w)
            opt.zero_grad()
            prec.backward(loss)
            prec.step(opt)

        def timed(fn):
            fn(0)
            sync()
            t = time.perf_counter()
            for i in range(a.iters):
                fn(i + 1)
            sync()
            return (time.perf_counter() - t) / a.iters

        plain_mixer = BatchMixer(DRIVER9, spec, 0.5, "none", device=dev)
        plain = timed(lambda i: step(plain_mixer(batch, i)))
        # the warp renders on the CPU: on one thread, and on one per core (its default)
        renderers = [("warp 1 thread", WarpRenderer(DRIVER9, threads=1)), ("warp", WarpRenderer(DRIVER9))]
        for ngf in (int(v) for v in a.ngf.split(",")):
            for mode in ("full", "inpaint"):
                g = SPADEGenerator(GeneratorConfig(26 + (4 if mode == "inpaint" else 0), (a.size, a.size), ngf,
                                                   area_channels=4 if mode == "inpaint" else 0)).to(dev)
                g.to(memory_format=torch.channels_last)
                dtype = prec.dtype or torch.float32
                renderers.append((f"gan-{mode} ngf {ngf}", GANRenderer(g.to(dtype), mode, DRIVER9, spec,
                                                                       (a.size, a.size), dev, dtype=dtype)))
        for name, r in renderers:
            mixer = BatchMixer(DRIVER9, spec, 0.5, "render", r, device=dev)
            mixed = timed(lambda i: step(mixer(batch, i)))
            render_only = timed(lambda i: mixer(batch, i))   # perturb, render, relabel, resize/translate
            print(f"{backbone + ' / ' + heads:<26}{name:<20}{plain:>13.3f}{mixed:>13.3f}{mixed / plain:>7.2f}x"
                  f"{render_only:>12.3f}", flush=True)


if __name__ == "__main__":
    main()
