"""Mixed precision on the GPU: training speed of the pose network and the GAN in fp32, bf16
and fp16, with peak GPU memory, and the peak memory of the whole augmented training step.

Rows (the training rows through the trainers' own :class:`posesynth.runs.Precision`:
autocast, a GradScaler for fp16, channels-last on CUDA):

- pose network (PVT v2 b1, medium heads) training step at ``--posenet-size`` px, batch
  ``--posenet-batch``: images/s;
- GAN iteration (SPADE generator + 2-scale PatchGAN, hinge + feature matching + L1, one G and
  one D update through ``GANTrainer.train_step``) at ``--gan-size`` px, ngf ``--gan-ngf``,
  batch ``--gan-batch``: images/s;
- the whole augmented training step (pose network at ``--whole-size`` px, batch
  ``--whole-batch``, half of every batch rendered on the same device, in fp32 outside
  autocast as ``train-posenet`` runs it), for each of ``--whole-renderers``: a SPADE
  generator of ngf ``--gan-ngf`` in inpaint mode (``gan``), the limb warp (``warp``, on the
  CPU by nature), and the warp corrected by a refiner of ngf ``--gan-ngf`` at 128 px crops
  (``refine``): s/step.
- generation (``generate``'s inference path, ``optimize_generator``: the weights themselves
  cast to fp16/bf16, no autocast) at the GAN's size, ngf and batch: images/s, and each reduced
  precision's PSNR against fp32.

Issue 11's targets: bf16 at least 2x fp32 (pose network at 384 px, batch 16; GAN at 256 px,
ngf 64, batch 8), and the whole augmented training at batch 4, 384 px in at most 12 GB.
Peak memory is ``torch.cuda.max_memory_allocated`` per row ("-" on the CPU, where only fp32
runs: bf16 is hundreds of times slower there).

    python benchmarks/bench_precision.py                       # CUDA when present: the targets
    python benchmarks/bench_precision.py --device cpu --posenet-size 64 --posenet-batch 2 \\
        --gan-size 64 --gan-ngf 8 --gan-batch 2 --whole-size 64 --whole-batch 2 --iters 1   # a smoke run
"""
from __future__ import annotations

import argparse
import gc
import math
import tempfile
import time
from pathlib import Path

import torch

from posesynth.augment.mixing import BatchMixer
from posesynth.augment.renderers import GANRenderer, RefineRenderer, WarpRenderer
from posesynth.datasets.layouts import DRIVER9
from posesynth.datasets.posemaps import PoseMapSpec
from posesynth.datasets.synthetic import render_scene, scene_rng
from posesynth.datasets.torch_dataset import sample_to_tensors
from posesynth.posenet.losses import PoseLossWeights, pose_loss
from posesynth.posenet.model import PoseNet, PoseNetConfig
from posesynth.runs import Precision
from posesynth.spade.generator import GeneratorConfig, SPADEGenerator
from posesynth.spade.inference import optimize_generator
from posesynth.spade.trainer import GANConfig, GANTrainer


class _Scenes:
    """``n`` synthetic driver scenes of ``size`` px, as a dataset source."""

    layout = DRIVER9

    def __init__(self, n: int, size: int) -> None:
        self.samples = [render_scene(scene_rng(0, i), size) for i in range(n)]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        return self.samples[i]


def _batch(size: int, n: int, dev: torch.device) -> dict[str, torch.Tensor]:
    items = [sample_to_tensors(render_scene(scene_rng(0, i), size), DRIVER9, max_people=2, with_maps=False)
             for i in range(n)]
    return {k: torch.stack([it[k] for it in items]).to(dev) for k in ("image", "heatmaps", "pafs", "masks", "keypoints")}


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _timed(fn, iters: int, dev: torch.device) -> tuple[float, "float | None", "float | None"]:
    """Seconds per call after one warm-up call, and the peak GPU memory in GiB of the warm-up call
    (where cuDNN's autotuning tries its algorithms, with their workspaces) and of the timed calls
    (None on CPU)."""
    gc.collect()   # the previous row's models (a trainer holds reference cycles) leave the device first
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
    fn()
    _sync(dev)
    first = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    _sync(dev)
    sec = (time.perf_counter() - t) / iters
    return sec, first, (torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None)


def _posenet_step(dev: torch.device, prec: Precision, batch: dict[str, torch.Tensor], mixer=None):
    torch.manual_seed(0)
    net = PoseNet(PoseNetConfig(9, 8, 1, "pvt_v2_b1", "none", "medium")).to(dev)
    if dev.type == "cuda":
        net.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), 1e-3)
    w = PoseLossWeights(100, 100, 1)
    count = [0]

    def step() -> None:
        b = mixer(batch, count[0]) if mixer is not None else batch   # outside autocast, as the trainer
        count[0] += 1
        image = b["image"].contiguous(memory_format=torch.channels_last) if dev.type == "cuda" else b["image"]
        with prec.autocast():
            loss, _ = pose_loss(net(image), b, w)
        opt.zero_grad(set_to_none=True)
        prec.backward(loss)
        prec.step(opt)

    return step


#: GAN steps skipped for a non-finite loss (fp16 overflow), per precision: they took no update
skipped: dict[str, int] = {}


def _gan_step(dev: torch.device, precision: str, size: int, ngf: int, batch: int, tmp: Path):
    cfg = GANConfig(size=(size, size), ngf=ngf, batch_size=batch, steps=10**6, vgg="off", augment=False,
                    device=str(dev), precision=precision, gallery_every=10**9, checkpoint_every=10**9,
                    log_every=10**9)
    t = GANTrainer(cfg, tmp / f"gan_{precision}", source=_Scenes(batch, size), progress=False)
    b = next(iter(t._loader(0)))

    def step() -> None:
        if t.train_step(b) is None:
            skipped[precision] = skipped.get(precision, 0) + 1
        t.step += 1

    return step



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precisions", default="", help="comma list (default: fp32,bf16,fp16 on CUDA, fp32 on CPU)")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--posenet-size", type=int, default=384)
    ap.add_argument("--posenet-batch", type=int, default=16)
    ap.add_argument("--gan-size", type=int, default=256)
    ap.add_argument("--gan-ngf", type=int, default=64)
    ap.add_argument("--gan-batch", type=int, default=8)
    ap.add_argument("--whole-size", type=int, default=384)
    ap.add_argument("--whole-batch", type=int, default=4)
    ap.add_argument("--whole-renderers", default="gan,warp,refine",
                    help="renderers of the whole augmented step: gan (inpaint SPADE), warp, refine (warp + "
                         "refiner at 128 px crops)")
    ap.add_argument("--rows", default="posenet,gan,whole,generation",
                    help="which rows: posenet, gan, whole (the augmented step), generation")
    a = ap.parse_args()
    kinds_known = ("posenet", "gan", "whole", "generation")
    if not set(a.rows.split(",")) <= set(kinds_known):
        ap.error(f"--rows: {a.rows!r}: choose from {', '.join(kinds_known)}")
    dev = torch.device(a.device)
    if dev.type == "cuda":   # as both trainers run on CUDA: cuDNN picks its algorithms on the first step
        torch.backends.cudnn.benchmark = True
    precisions = a.precisions.split(",") if a.precisions else (["fp32", "bf16", "fp16"] if dev.type == "cuda"
                                                                else ["fp32"])
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    print(f"{name}; {a.iters} timed iterations after one warm-up; peak = max GPU memory allocated")
    if dev.type == "cuda":
        print(f"fp32 matmul TF32 {torch.backends.cuda.matmul.allow_tf32}, cuDNN TF32 {torch.backends.cudnn.allow_tf32}")
    print("first GiB: the warm-up step's peak (cuDNN autotuning included); peak GiB: the timed steps' peak")
    print(f"{'what':<52}{'precision':>10}{'img/s':>10}{'s/step':>10}{'vs fp32':>9}{'first GiB':>10}{'peak GiB':>10}")
    gib = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    with tempfile.TemporaryDirectory() as td:
        rows = [
            (f"pose network b1/medium, {a.posenet_size} px, batch {a.posenet_batch}", a.posenet_batch,
             lambda p: _posenet_step(dev, Precision(p, dev), _batch(a.posenet_size, a.posenet_batch, dev))),
            (f"GAN iteration, {a.gan_size} px, ngf {a.gan_ngf}, batch {a.gan_batch}", a.gan_batch,
             lambda p: _gan_step(dev, p, a.gan_size, a.gan_ngf, a.gan_batch, Path(td))),
        ]

        def whole(kind: str):
            def build(p: str):
                prec = Precision(p, dev)
                spec = PoseMapSpec(size=(a.whole_size, a.whole_size))
                # the generator as train-posenet loads it: fp32, eval, outside the pose network's autocast
                if kind == "gan":
                    g = SPADEGenerator(GeneratorConfig(26 + 4, (a.whole_size, a.whole_size), a.gan_ngf,
                                                       area_channels=4)).to(dev).eval()
                    renderer = GANRenderer(g, "inpaint", DRIVER9, spec, (a.whole_size, a.whole_size), dev)
                elif kind == "refine":   # the refiner's generator (residual output) at its 128 px crop
                    g = SPADEGenerator(GeneratorConfig(26 + 4, (128, 128), a.gan_ngf, "normal", "instance", True, 0,
                                                       area_channels=4, output="residual")).to(dev).eval()
                    renderer = RefineRenderer(g, DRIVER9, PoseMapSpec(size=(128, 128)), 128, 0.25, dev)
                else:
                    renderer = WarpRenderer(DRIVER9)
                mixer = BatchMixer(DRIVER9, spec, 0.5, "render", renderer, device=dev)
                return _posenet_step(dev, prec, _batch(a.whole_size, a.whole_batch, dev), mixer)
            return build

        for kind in [k for k in a.whole_renderers.split(",") if k]:
            what = {"gan": f"GAN ngf {a.gan_ngf}", "warp": "warp", "refine": f"refine ngf {a.gan_ngf}"}[kind]
            rows.append((f"augmented training, {a.whole_size} px, batch {a.whole_batch}, {what}", a.whole_batch,
                         whole(kind)))
        outputs: dict[str, torch.Tensor] = {}

        def generation(p: str):
            # generate's inference path (optimize_generator: folded weights, channels-last) in precision p
            torch.manual_seed(0)
            gen = SPADEGenerator(GeneratorConfig(26, (a.gan_size, a.gan_size), a.gan_ngf)).to(dev).eval()
            maps = torch.rand(a.gan_batch, 26, a.gan_size, a.gan_size, device=dev)
            fast = optimize_generator(gen, dev, p)
            del gen
            x = maps.to(next(fast.parameters()).dtype).contiguous(memory_format=torch.channels_last)

            def step() -> None:
                with torch.inference_mode():
                    outputs[p] = fast(x).float()

            return step

        rows.append((f"generation, {a.gan_size} px, ngf {a.gan_ngf}, batch {a.gan_batch}", a.gan_batch, generation))
        chosen = set(a.rows.split(","))
        kinds = ["posenet", "gan"] + ["whole"] * (len(rows) - 3) + ["generation"]   # rows in that order
        for kind, (what, n, build) in zip(kinds, rows):
            if kind not in chosen:
                continue
            base = None
            for p in precisions:
                sec, first, peak = _timed(build(p), a.iters, dev)
                base = sec if p == "fp32" else base
                ratio = f"{base / sec:.2f}x" if base else "-"
                note = ""
                if skipped.get(p) and "GAN" in what:
                    note = f"  {skipped.pop(p)} steps skipped (non-finite)"
                if build is generation and p != "fp32" and "fp32" in outputs:
                    mse = float(((outputs[p] - outputs["fp32"]) ** 2).mean())
                    note = f"  PSNR vs fp32 {10 * math.log10(4.0 / max(mse, 1e-12)):.1f} dB"
                print(f"{what:<52}{p:>10}{n / sec:>10.1f}{sec:>10.3f}{ratio:>9}{gib(first):>10}{gib(peak):>10}{note}",
                      flush=True)


if __name__ == "__main__":
    main()
