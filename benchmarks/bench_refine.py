"""Refine mode's cost: a training step on crops against a full-frame SPADE step, and refining a
large frame.

Rows, timed in one process, interleaved (timings on a loaded 2-core machine vary by 30% and
more, so compare the ratio, measured side by side):

- ``refine``: ``GANTrainer.train_step`` of a refine-mode run at ``--crop`` px (the generator on
  maps + warp + M, the 2-scale PatchGAN on crops, hinge + feature matching + L1 in M);
- ``full``: the same trainer's step for a full-mode SPADE run at ``--frame`` (H,W), same ngf,
  SPADE width and batch;
- ``refine a frame``: :class:`~posesynth.augment.renderers.RefineRenderer` on one real squats
  frame (720x1280) with its arms moved: the warp, and the crop + generator + paste alone.

    python benchmarks/bench_refine.py [--ngf 16] [--hidden 32] [--batch 4] [--crop 128]
        [--frame 256,128] [--iters 5] [--threads 0]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from posesynth.datasets.layouts import DRIVER9
from posesynth.spade.config import GANConfig
from posesynth.spade.trainer import GANTrainer

ROOT = Path(__file__).resolve().parents[1]


class _Src:   # the steps are fed directly: one scene for the trainer's set-up
    layout = DRIVER9

    def __len__(self):
        return 1

    def __getitem__(self, i):
        from posesynth.datasets.synthetic import render_scene, scene_rng

        return render_scene(scene_rng(0, i), 128, passenger_prob=0.0)


def _trainer(cfg: GANConfig, dataset=None) -> GANTrainer:
    return GANTrainer(cfg, tempfile.mkdtemp(), source=_Src(), progress=False, dataset=dataset)


def _batch(b: int, h: int, w: int, refine: bool) -> dict:
    g = torch.Generator().manual_seed(0)
    out = {"maps": torch.rand(b, 26, h, w, generator=g), "image": torch.rand(b, 3, h, w, generator=g) * 2 - 1}
    if refine:
        out["warped"] = (out["image"] + 0.1 * torch.randn(b, 3, h, w, generator=g)).clamp(-1, 1)
        yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        out["region"] = (((yy - h / 2) ** 2 + (xx - w / 2) ** 2) < (h / 3) ** 2).float()[None, None].repeat(b, 1, 1, 1)
    return out


def _time(fn, iters: int) -> float:
    fn()
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t) / iters


def frame_refine(ngf: int, hidden: int, crop: int, iters: int) -> "tuple[float, float, tuple[int, int]] | None":
    """(warp s, crop + generator + paste s, frame size) on a real squats frame, or None without it."""
    from posesynth.augment.renderers import RefineRenderer, WarpRenderer
    from posesynth.datasets.formats import open_dataset
    from posesynth.datasets.posemaps import PoseMapSpec
    from posesynth.datasets.torch_dataset import image_to_tensor
    from posesynth.spade.archs.refine import RefineArch

    clip = ROOT.parent / "shared" / "fixtures" / "squats" / "pose_squats.full.json"
    if not clip.exists():
        return None
    src = open_dataset(clip)
    s = src[0]
    layout = src.layout
    cfg = GANConfig(mode="refine", crop_size=crop, ngf=ngf, spade_hidden=hidden, vgg="off").resolve()
    G = RefineArch(cfg, layout, cfg.posemaps).build_generator()
    torch.nn.init.normal_(G.conv_img.weight, std=1e-3)   # a non-zero residual: the paste runs
    warp = WarpRenderer(layout)
    r = RefineRenderer(G, layout, PoseMapSpec(size=(crop, crop)), crop, 0.25, warp=warp)
    new = s.keypoints.copy()
    for n in ("left_wrist", "right_wrist"):
        new[0, layout.index(n), 0] += 60
    img = image_to_tensor(s.image)[None]
    m = torch.zeros(1, layout.num_masks, *s.image.shape[:2])
    t_warp = _time(lambda: warp(img, m, s.keypoints[None], new[None]), iters)
    t_all = _time(lambda: r(img, m, s.keypoints[None], new[None]), iters)
    return t_warp, t_all - t_warp, s.image.shape[:2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ngf", type=int, default=16)
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--frame", default="256,128")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    fh, fw = (int(v) for v in a.frame.split(","))
    common = dict(ngf=a.ngf, spade_hidden=a.hidden, batch_size=a.batch, vgg="off", device="cpu")
    ref = _trainer(GANConfig(mode="refine", crop_size=a.crop, **common), dataset=[None])
    full = _trainer(GANConfig(mode="full", size=(fh, fw), **common))
    rb, fb = _batch(a.batch, a.crop, a.crop, True), _batch(a.batch, fh, fw, False)
    t_ref, t_full = [], []
    for _ in range(a.iters):   # interleaved, so both see the same load
        t_ref.append(_time(lambda: ref.train_step(rb), 1))
        t_full.append(_time(lambda: full.train_step(fb), 1))
    r_med, f_med = float(np.median(t_ref)), float(np.median(t_full))
    print(f"ngf {a.ngf}, SPADE width {a.hidden}, batch {a.batch}, fp32 CPU, {torch.get_num_threads()} threads, "
          f"median of {a.iters} interleaved steps")
    print(f"{'step':<34}{'s/step':>8}{'ratio':>8}")
    print(f"{'refine, ' + str(a.crop) + ' px crops':<34}{r_med:>8.2f}{f_med / r_med:>7.2f}x")
    print(f"{'full-frame spade, ' + f'{fh}x{fw}':<34}{f_med:>8.2f}{1.0:>7.2f}x")
    fr = frame_refine(a.ngf, a.hidden, a.crop, a.iters)
    if fr is None:
        print("refine a frame: the squats fixture is not at ../shared/fixtures (skipped)")
    else:
        tw, tr, hw = fr
        print(f"refine a {hw[0]}x{hw[1]} frame: warp {tw:.2f} s + crop, generator and paste {tr:.2f} s = "
              f"{tw + tr:.2f} s")


if __name__ == "__main__":
    main()
