"""``make demo``: the method end to end on a fresh machine, with no downloads, in under 15
minutes on 2 CPU cores.

1. synthetic driver data: a small training split with driving poses (narrow), and from the
   held-out wide pose distribution a validation split, a test split and an oracle training
   split (all disjoint);
2. renderers: the training-free limb warp, and an inpainting SPADE GAN trained for a fixed
   number of steps (so the result does not depend on the machine's speed);
3. render quality on held-out scenes against their true images (the same scene redrawn with
   the perturbed keypoints): the renderer with the higher PSNR inside the changed region is
   used;
4. the overfitting experiment: baseline, the chosen renderer and the oracle, with the same
   budget, transforms and seeds; checkpoints selected on validation, figures on test;
5. ``OUT/report.html``, and a last line with the measured verdict.
"""
from __future__ import annotations

import html
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["run_demo", "DemoPlan"]


@dataclass
class DemoPlan:
    n_train: int = 64
    n_val: int = 48
    n_test: int = 96
    n_oracle: int = 64
    n_quality: int = 24
    size: int = 96
    gan_steps: int = 150
    gan_ngf: int = 16
    pose_epochs: int = 12
    steps_per_epoch: int = 16
    batch_size: int = 8
    seeds: int = 2


QUICK = DemoPlan(n_train=8, n_val=6, n_test=6, n_oracle=8, n_quality=3, size=64, gan_steps=2, gan_ngf=8,
                 pose_epochs=1, steps_per_epoch=2, batch_size=2, seeds=2)


def run_demo(out: Path, quick: bool = False) -> str:
    """Run the demo into ``out`` (always afresh); returns the final line."""
    import cv2
    import numpy as np

    from .augment.experiment import ExperimentConfig, run_experiment
    from .augment.render import QualityConfig, render_quality
    from .datasets.formats import open_dataset
    from .datasets.make_data import make_synthetic_dataset
    from .datasets.visualize import make_grid
    from .io import atomic_write_text
    from .spade.trainer import GANConfig, GANTrainer

    p = QUICK if quick else DemoPlan()
    t0 = time.perf_counter()
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)  # the demo always starts afresh
    out.mkdir(parents=True)
    data = out / "data"

    def stage(i: int, text: str) -> None:
        print(f"\n[demo {i}/5, {time.perf_counter() - t0:.0f} s] {text}", flush=True)

    stage(1, f"synthetic driver data: {p.n_train} training images with driving poses; validation {p.n_val}, test "
             f"{p.n_test} and oracle training {p.n_oracle} images with wide arm poses")
    splits = {"train": (p.n_train, 0, "narrow"), "val": (p.n_val, 2, "wide"), "test": (p.n_test, 1, "wide"),
              "oracle": (p.n_oracle, 3, "wide"), "quality": (p.n_quality, 4, "narrow")}
    for name, (n, seed, pr) in splits.items():
        make_synthetic_dataset(data / name, n, seed=seed, size=p.size, pose_range=pr, workers=1, progress=False)
    for split in ("train", "test"):
        ds = open_dataset(data / split)
        grid = make_grid([ds[i] for i in range(min(8, len(ds)))], ds.layout, cols=8, cell=128)
        cv2.imwrite(str(out / f"{split}_grid.png"), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))

    stage(2, f"renderers: the limb warp (no training) and an inpainting SPADE GAN, {p.gan_steps} steps")
    gcfg = GANConfig(data=str(data / "train"), mode="inpaint", size=(p.size, p.size), ngf=p.gan_ngf, ndf=32,
                     batch_size=4, steps=p.gan_steps, gallery_every=max(p.gan_steps, 1), checkpoint_every=p.gan_steps,
                     vgg="off", lr_g=2e-4, lr_d=8e-4, device="auto")
    GANTrainer(gcfg, out / "gan").fit()

    stage(3, "render quality against the true images of the perturbed poses")
    q = render_quality(QualityConfig(data=str(data / "quality"), out=str(out / "quality"), renderer=("warp", "gan"),
                                     gan=(str(out / "gan"),), num=p.n_quality, picture_rows=6))
    ranked = sorted(q["renderers"].items(), key=lambda kv: -kv[1].get("psnr_M", -np.inf))
    best_name = ranked[0][0]
    cond = "warp" if best_name == "warp" else "gan"
    shutil.copy(out / "quality" / "quality.png", out / "renders.png")

    stage(4, f"pose network: baseline, {best_name} and oracle, {p.seeds} seeds, {p.pose_epochs} epochs x "
             f"{p.steps_per_epoch} steps x batch {p.batch_size} each")
    ecfg = ExperimentConfig(data=str(data / "train"), val=str(data / "val"), test=str(data / "test"),
                            oracle=str(data / "oracle"), gan=str(out / "gan") if cond == "gan" else "",
                            conditions=("baseline", cond, "oracle"), out=str(out / "experiment"),
                            train_sizes=(p.n_train,), seeds=p.seeds, epochs=p.pose_epochs,
                            steps_per_epoch=p.steps_per_epoch, batch_size=p.batch_size, size=(p.size, p.size),
                            pretrained="none", plateau_patience=3)
    summary = run_experiment(ecfg)

    stage(5, "report")
    for name in ("comparison.png", "curves.png", f"rendered_{cond}.png"):
        if (out / "experiment" / name).exists():
            shutil.copy(out / "experiment" / name, out / name)
    row = summary["rows"][0]
    cs, cmp = row["conditions"], row["compare"][cond]
    b, r, o = (cs[k]["test_PCK_best"]["mean"] for k in ("baseline", cond, "oracle"))
    share = cmp.get("oracle_share", float("nan"))
    no_gap = " (the oracle is not above the baseline)" if share != share else ""

    def f(v, d=3):
        return f"{v:.{d}f}" if v == v else "n/a"

    qrows = "".join(f"<tr><td>{html.escape(k)}</td><td>{f(v.get('psnr_M', float('nan')), 2)}</td>"
                    f"<td>{f(v.get('ssim_M', float('nan')))}</td><td>{f(v.get('psnr', float('nan')), 2)}</td></tr>"
                    for k, v in q["renderers"].items())
    erows = "".join(f"<tr><td>{html.escape(k)}</td><td>{f(v['test_PCK_best']['mean'])} ± {f(v['test_PCK_best']['sd'])}"
                    f"</td><td>{f(v['test_PCK_final']['mean'])}</td><td>{f(v['test_AP_best']['mean'])}</td>"
                    f"<td>{f(v['gap_PCK']['mean'])}</td></tr>" for k, v in cs.items())
    minutes = (time.perf_counter() - t0) / 60
    line = (f"demo done in {minutes:.1f} min: test PCK@0.2 baseline {f(b)}, {best_name} {f(r)}, oracle {f(o)}; "
            f"{best_name} closes {f(100 * share, 0)}% of the oracle gap{no_gap}; ahead on {cmp['ahead']} of {cmp['seeds']} "
            f"seeds. Report: {out / 'report.html'}")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>posesynth demo</title>
<style>body{{font-family:sans-serif;max-width:1300px;margin:auto}}td,th{{padding:4px 10px;border-bottom:1px solid #ddd}}
img{{max-width:100%}}</style></head><body>
<h1>posesynth demo</h1><p>Made on this machine in {minutes:.1f} minutes from nothing ({html.escape(str(out))}).</p>
<p><b>{html.escape(line)}</b></p>
<h2>1. Renders against the truth</h2>
<p>{p.n_quality} held-out driver scenes with arm-angle perturbations. Columns: source | perturbed pose maps | warp |
inpainting GAN ({p.gan_steps} steps) | ground truth (the same scene redrawn with the perturbed keypoints). PSNR and SSIM
inside M, the region around the moved arms' old and new positions. The experiment uses the renderer with the higher
PSNR in M: <b>{html.escape(best_name)}</b>.</p>
<table><tr><th>renderer</th><th>PSNR in M (dB)</th><th>SSIM in M</th><th>PSNR whole image</th></tr>{qrows}</table>
<img src="renders.png">
<h2>2. Does rendering new poses help?</h2>
<p>{p.n_train} training images with driving poses; test: {p.n_test} images with wide arm poses; checkpoints selected on
{p.n_val} other wide-pose images; oracle: {p.n_oracle} real wide-pose training images (the upper bound). pvt_v2_b0 with
small heads at {p.size} px, {p.pose_epochs} epochs x {p.steps_per_epoch} steps x batch {p.batch_size}, random
initialisation, the same transforms in every condition; {html.escape(best_name)} renders half of every batch.
{p.seeds} seeds; mean ± sd. A demo-sized run: see the README for the full experiment.</p>
<table><tr><th>condition</th><th>test PCK@0.2 (val-selected)</th><th>test PCK@0.2 (final)</th><th>test AP</th>
<th>train - test PCK</th></tr>{erows}</table>
<p>{html.escape(best_name)} against the baseline, paired by seed: {f(cmp['diff_mean'])} ± {f(cmp['diff_sd'])};
ahead on {cmp['ahead']} of {cmp['seeds']} seeds; the difference {'exceeds' if cmp['exceeds_spread'] else 'does not exceed'}
the spread over seeds; it closes {f(100 * share, 0)}% of the gap between baseline and oracle{no_gap}.</p>
<img src="comparison.png"><h2>Curves</h2><img src="curves.png">
<h2>Rendered slots of a training batch (source | render)</h2><img src="rendered_{cond}.png">
<h2>Data</h2><p>training split</p><img src="train_grid.png"><p>test split</p><img src="test_grid.png">
<p>Full figures: <a href="experiment/report.html">experiment report</a>, <a href="quality/index.html">render quality</a>,
<a href="gan/web/index.html">GAN gallery</a>.</p>
</body></html>"""
    atomic_write_text(out / "report.html", page)
    print("\n" + line)
    return line
