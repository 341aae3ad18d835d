"""Refine mode's cost: a training step on crops against a full-frame SPADE step, and refining a
large frame.

Rows, timed in one process, interleaved (timings on a loaded 2-core machine vary by 30% and
more, so compare the ratio, measured side by side):

- ``refine, <crop> px, same settings``: ``GANTrainer.train_step`` of a refine-mode run at
  ``--crop`` px with the full-frame run's settings (the generator on maps + warp + M, the
  2-scale PatchGAN on crops, hinge + feature matching + L1 in M): what the crop alone buys;
- ``refine, <crop> px, light``: the same with the refiner's README settings (``--light-hidden``
  SPADE width, a ``--light-ndf`` discriminator of ``--light-num-d`` scale(s)): same ngf, batch;
- ``full-frame spade, <H>x<W>``: the same trainer's step for a full-mode SPADE run at
  ``--frame`` (H,W), same ngf, SPADE width and batch;
- ``refine a frame``: :class:`~posesynth.augment.renderers.RefineRenderer` (the light refiner's
  generator) on one real squats frame (720x1280) with its arms moved: the warp, and the crop +
  generator + paste alone; then the same with a background plate and a limb bank of frames
  0-47 (frame 48 given frame 52's arms: both arms are the bank's, and the body the old arms
  hid is filled from the bank).

    python benchmarks/bench_refine.py [--ngf 16] [--hidden 32] [--batch 4] [--crop 128]
        [--frame 256,128] [--light-hidden 16] [--light-ndf 16] [--light-num-d 1] [--iters 5] [--threads 0]
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


def frame_refine(ngf: int, hidden: int, crop: int, iters: int
                 ) -> "list[tuple[str, float, float, tuple[int, int]]] | None":
    """``(setting, warp s, crop + generator + paste s, frame size)`` on real squats frames: no
    plate or bank, then plate + limb bank (+ body fill); last ``("hand rest", warp s, the same
    warp without erasing the old hand's rest s, size)``; ``None`` without the fixture."""
    from posesynth.augment.renderers import LimbBank, RefineRenderer, WarpRenderer
    from posesynth.datasets.formats import open_dataset
    from posesynth.datasets.plate import build_plate
    from posesynth.datasets.posemaps import PoseMapSpec
    from posesynth.datasets.torch_dataset import image_to_tensor
    from posesynth.spade.archs.refine import RefineArch

    clip = ROOT.parent / "shared" / "fixtures" / "squats" / "pose_squats.full.json"
    if not clip.exists():
        return None
    src = open_dataset(clip)
    layout = src.layout
    cfg = GANConfig(mode="refine", crop_size=crop, ngf=ngf, spade_hidden=hidden, vgg="off").resolve()
    G = RefineArch(cfg, layout, cfg.posemaps).build_generator()
    torch.nn.init.normal_(G.conv_img.weight, std=1e-3)   # a non-zero residual: the paste runs
    s = src[0]
    new = s.keypoints.copy()
    for n in ("left_wrist", "right_wrist"):
        new[0, layout.index(n), 0] += 60
    train = [src[i] for i in range(48)]   # the bank's and the plate's frames
    bank = LimbBank([f.image for f in train], np.stack([f.keypoints for f in train]), layout)
    plate = build_plate(((f.image, f.keypoints) for f in train), layout)
    s2, t2 = src[48], src[52]
    new2 = s2.keypoints.copy()
    arms = [layout.index(f"{side}_{j}") for side in ("left", "right") for j in ("shoulder", "elbow", "wrist")]
    new2[0, arms] = t2.keypoints[0, arms]
    rows = []
    for name, warp, (f, kp) in (("no plate, no bank", WarpRenderer(layout), (s, new)),
                                ("plate + limb bank + body fill",
                                 WarpRenderer(layout, background=plate, bank=bank), (s2, new2))):
        r = RefineRenderer(G, layout, PoseMapSpec(size=(crop, crop)), crop, 0.25, warp=warp)
        img = image_to_tensor(f.image)[None]
        m = torch.zeros(1, layout.num_masks, *f.image.shape[:2])
        t_warp = _time(lambda: warp(img, m, f.keypoints[None], kp[None]), iters)
        t_all = _time(lambda: r(img, m, f.keypoints[None], kp[None]), iters)
        rows.append((name, t_warp, t_all - t_warp, f.image.shape[:2]))
    st = warp.describe()
    if not st["bank"]["used"] or not st["bank_body"]["filled"]:
        raise SystemExit(f"the bank row did not use the bank as meant: {st}")
    # what erasing the old hand's rest costs that warp: with and without it, interleaved
    pair = {"with": warp, "without": WarpRenderer(layout, background=plate, bank=bank, hand_rest=0)}
    rest: dict[str, list[float]] = {k: [] for k in pair}
    for _ in range(iters):
        for k, w in pair.items():
            rest[k].append(_time(lambda: w(img, m, f.keypoints[None], kp[None]), 1))
    rows.append(("hand rest", float(np.median(rest["with"])), float(np.median(rest["without"])), f.image.shape[:2]))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ngf", type=int, default=16)
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--frame", default="256,128")
    ap.add_argument("--light-hidden", type=int, default=16, help="the light refiner's SPADE width")
    ap.add_argument("--light-ndf", type=int, default=16,
                    help="the light refiner's discriminator width (README: 16; 32 before the limb-bank refiner)")
    ap.add_argument("--light-num-d", type=int, default=1, help="the light refiner's discriminator scales")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    fh, fw = (int(v) for v in a.frame.split(","))
    common = dict(ngf=a.ngf, spade_hidden=a.hidden, batch_size=a.batch, vgg="off", device="cpu")
    light = dict(common, spade_hidden=a.light_hidden, ndf=a.light_ndf, num_d=a.light_num_d)
    full_name = f"full-frame spade, {fh}x{fw}"
    rows = {f"refine, {a.crop} px, same settings": (GANConfig(mode="refine", crop_size=a.crop, **common), True),
            f"refine, {a.crop} px, light": (GANConfig(mode="refine", crop_size=a.crop, **light), True),
            full_name: (GANConfig(mode="full", size=(fh, fw), **common), False)}
    steps = {}
    for name, (cfg, refine) in rows.items():
        t = _trainer(cfg, dataset=[None] if refine else None)
        steps[name] = (t, _batch(a.batch, a.crop, a.crop, True) if refine else _batch(a.batch, fh, fw, False))
    times: dict[str, list[float]] = {name: [] for name in rows}
    for _ in range(a.iters):   # interleaved, so every row sees the same load
        for name, (t, b) in steps.items():
            times[name].append(_time(lambda: t.train_step(b), 1))
    med = {name: float(np.median(v)) for name, v in times.items()}
    f_med, fc = med[full_name], steps[full_name][0].cfg
    scales = "scale" if a.light_num_d == 1 else "scales"
    print(f"ngf {a.ngf}, SPADE width {a.hidden} (light: {a.light_hidden}), discriminator ndf {fc.ndf}, {fc.num_d} "
          f"scales (light: ndf {a.light_ndf}, {a.light_num_d} {scales}), batch {a.batch}, fp32 CPU, "
          f"{torch.get_num_threads()} threads, median of {a.iters} interleaved steps")
    print(f"{'step':<34}{'s/step':>8}{'full / this':>13}")
    for name, m in med.items():
        print(f"{name:<34}{m:>8.2f}{f_med / m:>12.2f}x")
    fr = frame_refine(a.ngf, a.light_hidden, a.crop, a.iters)
    if fr is None:
        print("refine a frame: the squats fixture is not at ../shared/fixtures (skipped)")
    else:
        for name, tw, tr, hw in fr:
            if name == "hand rest":
                print(f"that warp erasing the old hand's rest: {tw:.3f} s against {tr:.3f} s without ({tw / tr:.3f}x, "
                      f"median of {a.iters} interleaved)")
                continue
            print(f"refine a {hw[0]}x{hw[1]} frame (light), {name}: warp {tw:.2f} s + crop, generator and paste "
                  f"{tr:.2f} s = {tw + tr:.2f} s")


if __name__ == "__main__":
    main()
