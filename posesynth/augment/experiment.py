"""The overfitting experiment (``posesynth experiment overfitting``): the pose network trained
on small training sets with and without GAN-in-the-loop augmentation, under identical
budgets (same epochs, steps, batch size, seeds), compared on held-out data.

Writes ``OUT/report.html`` with PNG plots (train and validation loss curves, held-out PCK and
OKS AP as mean and spread over seeds, the train-validation gap), sample images of the
generated half, and ``OUT/results.json``.
"""
from __future__ import annotations

import html
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..datasets.formats import KeypointSource, open_dataset
from ..io import atomic_write_json, atomic_write_text
from ..posenet.trainer import PoseNetTrainer, PoseTrainConfig
from .mixing import GANBatchMixer
from .perturb import MODES, PerturbConfig

__all__ = ["ExperimentConfig", "run_experiment", "Subset"]

log = logging.getLogger(__name__)


class Subset:
    """The first ``n`` items of ``source`` after a permutation seeded by ``seed``."""

    def __init__(self, source: KeypointSource, n: int, seed: int) -> None:
        self.source, self.layout = source, source.layout
        self.idx = np.random.default_rng([seed, 7919]).permutation(len(source))[:n]

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, i: int):
        return self.source[int(self.idx[i])]


@dataclass
class ExperimentConfig:
    data: str = ""
    val: str = ""
    gan: str = field(default="", metadata={"help": "GAN run directory"})
    out: str = "runs/experiment"
    train_sizes: tuple[int, ...] = (32, 64, 128)
    seeds: int = 3
    epochs: int = 20
    steps_per_epoch: int = 8
    batch_size: int = 8
    size: tuple[int, int] = (128, 128)
    backbone: str = "pvt_v2_b0"
    pretrained: str = "auto"
    heads: str = "small"
    lr: float = 1e-3
    fraction: float = 0.5
    perturb: str = field(default="arms-high", metadata={"help": "|".join(MODES)})
    device: str = "cpu"
    gan_device: str = ""
    judge: str = field(default="", metadata={"help": "optional pose-network run to filter generated samples"})
    judge_threshold: float = 0.01


def _posecfg(c: ExperimentConfig, seed: int) -> PoseTrainConfig:
    return PoseTrainConfig(size=tuple(c.size), backbone=c.backbone, pretrained=c.pretrained, heads=c.heads,
                           lr=c.lr, epochs=c.epochs, batch_size=c.batch_size, steps_per_epoch=c.steps_per_epoch,
                           device=c.device, seed=seed, plateau_patience=10**6)


def run_experiment(c: ExperimentConfig, train: "KeypointSource | None" = None, val: "KeypointSource | None" = None,
                   progress: bool = True) -> dict[str, Any]:
    from ..spade.render import check_compatible
    from ..spade.trainer import load_generator

    out = Path(c.out)
    out.mkdir(parents=True, exist_ok=True)
    train = train if train is not None else open_dataset(c.data, on_error="skip")
    val = val if val is not None else open_dataset(c.val, on_error="skip")
    gen, gan_layout, meta = load_generator(c.gan, c.gan_device or c.device)
    check_compatible(gan_layout, train.layout, c.gan, c.data)
    judge = None
    if c.judge:
        from ..posenet.trainer import load_posenet

        judge, _, _ = load_posenet(c.judge, c.gan_device or c.device)
    results: list[dict[str, Any]] = []
    samples_png = None
    t_all = time.perf_counter()
    for n in c.train_sizes:
        for seed in range(c.seeds):
            sub = Subset(train, min(n, len(train)), seed)
            for cond in ("baseline", "gan"):
                run = out / f"n{n}_seed{seed}_{cond}"
                mixer = None
                if cond == "gan":
                    mixer = GANBatchMixer(gen, train.layout, c.fraction, PerturbConfig(c.perturb),
                                          gan_device=c.gan_device or c.device, device=c.device,
                                          gan_size=tuple(meta["generator"]["size"]), judge=judge,
                                          judge_threshold=c.judge_threshold, seed=seed)
                if progress:
                    print(f"[experiment] train size {n}, seed {seed}, {cond}", flush=True)
                t = PoseNetTrainer(_posecfg(c, seed), run, source=sub, val_source=val, progress=progress,
                                   batch_hook=mixer, resume=(run / "checkpoints" / "latest.json").exists())
                t.fit()
                best = max(t.history, key=lambda r: r.get("val_PCK@0.2", -1))
                last = t.history[-1]
                results.append({"n": n, "seed": seed, "cond": cond, "history": t.history,
                                "best_PCK": best.get("val_PCK@0.2"), "best_AP": best.get("val_AP"),
                                "final_PCK": last.get("val_PCK@0.2"), "final_AP": last.get("val_AP"),
                                "final_gap": last.get("val_loss", np.nan) - last.get("train_loss", np.nan),
                                "mix": vars(mixer.stats) if mixer else None})
                if mixer is not None and mixer.last_generated is not None and samples_png is None:
                    samples_png = _samples(mixer, out / "generated_samples.png")
    summary = _summarise(results, c)
    summary["seconds"] = time.perf_counter() - t_all
    atomic_write_json(out / "results.json", {"config": {k: (list(v) if isinstance(v, tuple) else v)
                                                        for k, v in vars(c).items()},
                                             "summary": summary, "runs": results}, indent=1)
    _plots(results, c, out)
    _report(summary, c, out, samples_png is not None)
    return summary


def _samples(mixer: GANBatchMixer, path: Path) -> Path:
    import cv2

    from ..datasets.torch_dataset import tensor_to_image

    imgs = [tensor_to_image(x) for x in mixer.last_generated[:8]]
    cv2.imwrite(str(path), cv2.cvtColor(np.concatenate(imgs, 1), cv2.COLOR_RGB2BGR))
    return path


def _summarise(results: list[dict[str, Any]], c: ExperimentConfig) -> dict[str, Any]:
    rows = []
    for n in c.train_sizes:
        row: dict[str, Any] = {"n": n}
        for cond in ("baseline", "gan"):
            rs = [r for r in results if r["n"] == n and r["cond"] == cond]
            for key in ("best_PCK", "best_AP", "final_gap"):
                v = np.array([r[key] if r[key] is not None else np.nan for r in rs], float)
                row[f"{cond}_{key}_mean"] = float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")
                row[f"{cond}_{key}_std"] = float(np.nanstd(v)) if np.isfinite(v).any() else float("nan")
        rows.append(row)
    return {"rows": rows}


def _plots(results: list[dict[str, Any]], c: ExperimentConfig, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"baseline": "tab:blue", "gan": "tab:orange"}
    fig, axes = plt.subplots(1, len(c.train_sizes), figsize=(4.5 * len(c.train_sizes), 3.6), squeeze=False)
    for ax, n in zip(axes[0], c.train_sizes):
        for cond in ("baseline", "gan"):
            for key, style in (("train_loss", "-"), ("val_loss", "--")):
                curves = [[h.get(key, np.nan) for h in r["history"]] for r in results if r["n"] == n and r["cond"] == cond]
                if not curves:
                    continue
                m = min(len(x) for x in curves)
                arr = np.array([x[:m] for x in curves], float)
                ep = np.arange(1, m + 1)
                mu, sd = np.nanmean(arr, 0), np.nanstd(arr, 0)
                ax.plot(ep, mu, style, color=colours[cond], label=f"{cond} {key.split('_')[0]}")
                ax.fill_between(ep, mu - sd, mu + sd, color=colours[cond], alpha=0.15)
        ax.set_title(f"{n} training images")
        ax.set_xlabel("epoch")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=90)
    plt.close(fig)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, key, label in zip(axes, ("best_PCK", "best_AP", "final_gap"),
                              ("held-out PCK@0.2", "held-out OKS AP", "val loss - train loss (final)")):
        for j, cond in enumerate(("baseline", "gan")):
            ns, mu, sd = [], [], []
            for n in c.train_sizes:
                v = np.array([r[key] for r in results if r["n"] == n and r["cond"] == cond and r[key] is not None], float)
                if len(v):
                    ns.append(n)
                    mu.append(np.nanmean(v))
                    sd.append(np.nanstd(v))
            ax.errorbar(np.array(ns) * (1 + 0.03 * (j - 0.5)), mu, yerr=sd, marker="o", capsize=3,
                        color=colours[cond], label=cond)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("training images")
        ax.set_title(label)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "comparison.png", dpi=90)
    plt.close(fig)


def _report(summary: dict[str, Any], c: ExperimentConfig, out: Path, has_samples: bool) -> None:
    def f(v):
        return "n/a" if v is None or not np.isfinite(v) else f"{v:.3f}"

    rows = "".join(
        f"<tr><td>{r['n']}</td>"
        + "".join(f"<td>{f(r[f'{cond}_{k}_mean'])} ± {f(r[f'{cond}_{k}_std'])}</td>"
                  for k in ("best_PCK", "best_AP", "final_gap") for cond in ("baseline", "gan"))
        + "</tr>" for r in summary["rows"])
    head = "".join(f"<th>{html.escape(k)} {cond}</th>" for k in ("PCK@0.2", "OKS AP", "gap") for cond in ("baseline", "GAN"))
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>posesynth: overfitting experiment</title>
<style>body{{font-family:sans-serif;max-width:1300px;margin:auto}}td,th{{padding:4px 8px;border-bottom:1px solid #ddd}}</style>
</head><body><h1>Does GAN-in-the-loop augmentation reduce overfitting?</h1>
<p>Pose network {html.escape(c.backbone)} ({html.escape(c.heads)} heads) at {c.size[0]}x{c.size[1]}, trained
{c.epochs} epochs x {c.steps_per_epoch} steps x batch {c.batch_size} in both conditions, {c.seeds} seed(s) each.
GAN condition: {c.fraction:.0%} of every batch rendered by the generator from <b>{html.escape(c.perturb)}</b>
poses. Held-out data: {html.escape(c.val)}. Mean ± standard deviation over seeds; PCK and AP are the best
validation epoch's; the gap is final validation loss minus final training loss.</p>
<table><tr><th>training images</th>{head}</tr>{rows}</table>
<h2>Held-out accuracy and train-validation gap</h2><img src="comparison.png">
<h2>Loss curves (mean ± sd over seeds)</h2><img src="curves.png">
{'<h2>Generated half of a batch</h2><img src="generated_samples.png">' if has_samples else ''}
</body></html>"""
    atomic_write_text(out / "report.html", page)
