"""The overfitting experiment (``posesynth experiment overfitting``): does rendering new poses
help a pose network trained on a small dataset, and how much of what new real poses would give?

Conditions (``--conditions``), all with the same budget (epochs, steps, batch size), the same
seeds, the same data transforms and the same post-mix resize and translation of every batch;
they differ only in what fills the replaced slots (:class:`~posesynth.augment.mixing.BatchMixer`):

- ``baseline``: nothing replaced;
- ``real-dup`` (control): the slots get other real training samples, so a gain can be told
  apart from a change of batch composition;
- ``warp``, ``gan``: the slots get renders of arm-perturbed poses (``gan`` in the run's mode);
- ``oracle``: nothing replaced, trained on as many real images drawn from the held-out pose
  distribution (``--oracle``, disjoint from the test set): the upper bound of what rendering
  new poses could give.

Three splits: ``--val`` selects the checkpoint (best epoch), drives the plateau scheduler and
early stopping; ``--test`` is only reported, at the validation-selected epoch and at the final
epoch; ``--report-at`` says which of the two the comparisons and the gap are on (``best``, the
default, or ``last``: the end of the fixed budget, which no noisy validation figure chooses).
PCK counts every labelled person (multi-person decoding when the data holds several people), so
perfect predictions score 1.0.  The generalisation gap is reported as training
PCK minus test PCK and as test loss minus training loss, both measured the same way (eval
mode, no augmentation) after training.

Writes ``OUT/report.html`` (tables, a bar chart, every condition's curves, a strip of rendered
slots, the share of the oracle gap each renderer closes, a paired comparison per seed) and
``OUT/results.json``.
"""
from __future__ import annotations

import html
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from scipy import stats

from ..config import to_dict
from ..datasets.formats import DataOptions, KeypointSource, data_options, open_dataset, source_annotations
from ..datasets.posemaps import PoseMapSpec
from ..datasets.torch_dataset import PoseMapDataset, max_people_of, tensor_to_image
from ..errors import ConfigError, PosesynthError
from ..io import atomic_write_json, atomic_write_text, record_settings
from ..posenet.evaluate import evaluate_dataset
from ..posenet.losses import PoseLossWeights
from ..posenet.trainer import PoseNetTrainer, PoseTrainConfig
from ..runs import resolve_device, resolve_gan_device
from .mixing import BatchMixer
from .perturb import check_mode
from .renderers import GAN_RENDERERS
from .training import build_mixer, load_judge, load_renderer

__all__ = ["ExperimentConfig", "run_experiment", "Subset", "CONDITIONS", "summarise", "paired_stats", "verdict",
           "best_renderer", "reported_keys"]

log = logging.getLogger(__name__)
CONDITIONS = ("baseline", "real-dup", "warp", "gan", "refine", "oracle")
#: ``--report-at`` -> which of each run's two scorings it reads (see :func:`reported_keys`)
REPORT_AT = {"best": "best", "last": "final"}
RENDERED = ("warp", "gan", "refine")


class Subset:
    """The first ``n`` items of ``source`` after a permutation seeded by ``seed`` (all of them
    when ``source`` has fewer)."""

    def __init__(self, source: KeypointSource, n: int, seed: int) -> None:
        self.source, self.layout = source, source.layout
        self.idx = np.random.default_rng([seed, 7919]).permutation(len(source))[:n]

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, i: int):
        return self.source[int(self.idx[i])]

    def annotations(self) -> list[np.ndarray]:
        """The people of every item, in the source's layout, without decoding images."""
        every = source_annotations(self.source)
        return [every[int(i)] for i in self.idx]


@dataclass
class ExperimentConfig:
    data: str = field(default="", metadata={
        "help": "training data (the pose distribution the user has; several as A,B:WEIGHT) (required, here or in "
                "--config)"})
    val: str = field(default="", metadata={
        "help": "validation data from the held-out distribution: selects epochs, never reported (required, here or "
                "in --config)"})
    test: str = field(default="", metadata={
        "help": "test data from the held-out distribution: only reported (required, here or in --config)"})
    oracle: str = field(default="", metadata={
        "help": "real training images from the held-out distribution (not the test set), for the oracle condition "
                "(needed when the conditions include oracle)"})
    gan: str = field(default="", metadata={
        "help": "train-gan run for the gan or the refine condition (needed when the conditions include one)"})
    data_options: DataOptions = field(default_factory=DataOptions, metadata={"help": "how the data is read"})
    conditions: tuple[str, ...] = field(default=("baseline", "real-dup", "warp", "oracle"), metadata={
        "help": ",".join(CONDITIONS)})
    out: str = field(default="runs/experiment", metadata={
        "help": "output folder: one run per condition, size and seed, and report.html"})
    train_sizes: tuple[int, ...] = field(default=(32, 64, 128), metadata={
        "help": "training-set sizes to compare, comma-separated (each a seeded subset of --data)"})
    seeds: int = field(default=3, metadata={"help": "seeds per size and condition"})
    first_seed: int = field(default=0, metadata={
        "help": "the first seed: the runs are seeds first_seed .. first_seed+seeds-1, so further seeds can "
                "be added to a folder, or trained by another process into another folder, without "
                "re-scoring the earlier ones; the folder's results.json and report are then rewritten "
                "with those seeds alone (--first-seed 0 with every seed re-scores them all)"})
    epochs: int = field(default=20, metadata={"help": "epochs of every pose run"})
    steps_per_epoch: int = field(default=8, metadata={
        "help": "steps per epoch of every pose run (the same budget in every condition)"})
    batch_size: int = field(default=8, metadata={"help": "images per step"})
    size: tuple[int, int] = field(default=(128, 128), metadata={"help": "network input H,W (multiples of 32)"})
    backbone: str = field(default="pvt_v2_b0", metadata={"help": "pvt_v2_b0|pvt_v2_b1|pvt_v2_b2"})
    pretrained: str = field(default="auto", metadata={
        "help": "backbone weights: auto (the local timm cache)|none|PATH"})
    heads: str = field(default="small", metadata={"help": "small|medium|nadsnet-original"})
    lr: float = field(default=1e-3, metadata={"help": "learning rate"})
    plateau_patience: int = field(default=4, metadata={"help": "epochs without a better validation PCK before "
                                                               "the learning rate drops"})
    early_stop: int = field(default=0, metadata={"help": "stop after this many epochs without a better "
                                                         "validation PCK (0: off)"})
    lr_schedule: str = field(default="plateau", metadata={
        "help": "plateau|cosine (per epoch, from --lr towards 1% of it after the last epoch)"})
    ema: float = field(default=0.0, metadata={
        "help": "moving average of the weights, validated and tested (0: off; e.g. 0.99)"})
    fraction: float = field(default=0.5, metadata={
        "help": "share of each batch replaced (renders or, for real-dup, other real images)"})
    augment: str = field(default="arms-angle", metadata={"help": "perturbation: arms-angle|arms-slight|arms-high|"
                                                                 "learned:RUN"})
    rare: bool = field(default=False, metadata={"help": "draw new arm angles where the training data is thin"})
    plausibility: str = field(default="", metadata={
        "help": "train-motion run whose critic filters perturbations (unset: none)"})
    multi_person: str = field(default="auto", metadata={
        "help": "auto (PAF grouping when an image holds several people)|true|false"})
    data_augment: bool = field(default=True, metadata={
        "help": "each pose run's own random scale/rotation/shift/flip and colour changes (train-posenet's "
                "--data-augment), the same in every condition; the post-scale and post-translate below apply either way"})
    post_scale: tuple[float, float] = field(default=(0.9, 1.1), metadata={
        "help": "random resize of every batch, in every condition (min,max)"})
    post_translate: float = field(default=0.05, metadata={
        "help": "random shift of every batch, in every condition (fraction of the size)"})
    device: str = field(default="auto", metadata={
        "help": "auto (CUDA when present, else cpu)|cpu|cuda:N, for the pose runs"})
    gan_device: str = field(default="auto", metadata={
        "help": "where the generator runs (auto: a GPU of its own when there is one, else --device)"})
    judge: str = field(default="", metadata={
        "help": "pose-network run that filters renders (unset: every render is kept)"})
    judge_pck: float = field(default=0.5, metadata={
        "help": "a render is kept when the judge's PCK@0.2 on it reaches this"})
    init: str = field(default="", metadata={
        "help": "start every pose run from this train-posenet run's weights (e.g. one trained on synthetic scenes); "
                "its layout and pose maps must be the experiment's (unset: random or --pretrained)"})
    overfit_gap: float = field(default=0.1, metadata={
        "help": "a comparison means something only where the baseline's training PCK is at least this above its "
                "test PCK"})
    report_at: str = field(default="best", metadata={
        "help": "which network of each run the comparisons and the train - test gap are on: best (the epoch "
                "validation selects) or last (the end of the fixed budget; free of validation with --lr-schedule "
                "cosine, as --early-stop is refused and the plateau schedule's drops follow validation): with a "
                "small validation split, less noisy. Both are always scored; a finished folder can be reported "
                "either way without training again (its runs are scored again; the report is rewritten)"})


def _check(c: ExperimentConfig) -> None:
    from ..config import check_numbers

    check_numbers(c, {"train_sizes": ">=1", "seeds": ">=1", "first_seed": ">=0", "epochs": ">=1",
                      "steps_per_epoch": ">=0", "batch_size": ">=1", "lr": ">=0", "plateau_patience": ">=0",
                      "early_stop": ">=0", "ema": "[0,1)",
                      "fraction": "[0,1]", "post_scale": ">0", "post_translate": "[0,1)", "judge_pck": "[0,1]",
                      "overfit_gap": ">=0"})
    if c.report_at not in REPORT_AT:
        raise ConfigError(f"--report-at must be best or last, not {c.report_at!r}")
    if c.report_at == "last" and c.early_stop:
        raise ConfigError("--report-at last reports the network at the end of the budget, but --early-stop ends each "
                          "run where validation says: use one or the other")
    if c.report_at == "last" and c.lr_schedule == "plateau":
        log.warning("--report-at last with the plateau schedule: validation still decides when each run's "
                    "learning rate drops (--lr-schedule cosine does not read it)")
    if any(s % 32 or s < 64 for s in c.size):
        raise ConfigError(f"--size {c.size} must be multiples of 32, at least 64")
    if c.lr_schedule not in ("plateau", "cosine"):
        raise ConfigError(f"--lr-schedule must be plateau or cosine, not {c.lr_schedule!r}")
    bad = [x for x in c.conditions if x not in CONDITIONS]
    if bad:
        raise ConfigError(f"unknown condition(s) {', '.join(bad)} (known: {', '.join(CONDITIONS)})")
    for name in ("data", "val", "test"):
        if not getattr(c, name):
            raise ConfigError(f"--{name} is required")
    if "oracle" in c.conditions and not c.oracle:
        raise ConfigError("the oracle condition needs --oracle (real training images from the held-out "
                          "distribution, other than the test set)")
    for name in GAN_RENDERERS:
        if name in c.conditions and not c.gan:
            raise ConfigError(f"the {name} condition needs --gan RUN")
    if "gan" in c.conditions and "refine" in c.conditions:
        raise ConfigError("the gan and refine conditions each need their own --gan run: run them in two experiments")
    for a, b in (("val", "test"), ("oracle", "test"), ("data", "test"), ("val", "oracle")):
        x, y = getattr(c, a), getattr(c, b)
        if x and y and Path(x).resolve() == Path(y).resolve():
            raise ConfigError(f"--{a} and --{b} are the same data; the splits must be disjoint")
    check_mode(c.augment)


def _posecfg(c: ExperimentConfig, seed: int, multi_person: bool) -> PoseTrainConfig:
    return PoseTrainConfig(size=tuple(c.size), backbone=c.backbone, pretrained=c.pretrained, heads=c.heads,
                           lr=c.lr, epochs=c.epochs, batch_size=c.batch_size, steps_per_epoch=c.steps_per_epoch,
                           device=c.device, seed=seed, plateau_patience=c.plateau_patience,
                           early_stop=c.early_stop, multi_person=multi_person, precision="auto", fit="letterbox",
                           init=c.init, lr_schedule=c.lr_schedule, ema=c.ema, data_augment=c.data_augment)


def _eval_set(source: KeypointSource, c: ExperimentConfig, spec: PoseMapSpec, max_people: int) -> PoseMapDataset:
    return PoseMapDataset(source, tuple(c.size), None, spec.stride, spec, max_people, with_maps=False,
                          fit="letterbox", with_original=True)


def _settings(c: ExperimentConfig) -> dict[str, Any]:
    """What every run of an experiment shares (recorded in ``OUT/experiment.json``): a rerun into
    the same ``--out`` must match it.  ``conditions``, ``train_sizes`` and ``seeds`` may grow
    (each run's own config is compared too); ``first_seed``, ``device``, ``gan_device`` and what
    only the report reads (``report_at``, ``overfit_gap``) may change."""
    d = to_dict(c)
    for k in ("out", "conditions", "train_sizes", "seeds", "first_seed", "device", "gan_device", "report_at",
              "overfit_gap"):
        d.pop(k, None)
    for k in ("data", "val", "test", "oracle", "gan", "judge", "init"):
        if d.get(k):
            d[k] = str(Path(d[k]).resolve())
    return d


def _check_out(out: Path, c: ExperimentConfig) -> None:
    """Refuse an ``--out`` that holds an experiment with other settings, naming the difference.
    ``--gan`` may be added to a folder made without one (only the GAN conditions read it, and
    none of its runs did), so a refine condition can join finished baseline and warp runs; only
    with such a condition, whose renderer has then been loaded from it (a mistyped path is not
    recorded)."""
    gan_used = any(x in GAN_RENDERERS for x in c.conditions)
    record_settings(out, "experiment.json", _settings(c), "an experiment", "n*_seed*_*/checkpoints/latest.json",
                    defaults=_settings(ExperimentConfig()), fillable=("gan",) if gan_used else ())


def _device_kind(spec: Any) -> str:
    """``cpu`` or ``cuda`` (or another torch device type) for a ``--device`` value here."""
    spec = str(spec)
    return resolve_device("auto").type if spec == "auto" else spec.split(":")[0]


def _resumable(run: Path, pcfg: PoseTrainConfig) -> bool:
    """Whether ``run`` holds this pose run to continue (its config equal to ``pcfg``; the device
    may be named differently if it is the same kind here: ``cpu`` and ``auto`` on a machine
    without CUDA); a run with other settings is refused, naming the difference (a CPU run is not
    continued on a GPU: its precision would change half way)."""
    if not (run / "checkpoints" / "latest.json").exists():
        return False
    saved = yaml.safe_load((run / "config.yaml").read_text()) if (run / "config.yaml").exists() else None
    now = to_dict(pcfg)
    default = to_dict(PoseTrainConfig())
    if isinstance(saved, dict):
        # an option added since that run was made counts as its default there
        diff = [f"{k}: {saved.get(k, default.get(k))!r} there, {v!r} now" for k, v in now.items()
                if saved.get(k, default.get(k)) != v
                and not (k == "device" and _device_kind(saved.get(k, default.get(k))) == _device_kind(v))]
        if diff:
            raise ConfigError(f"{run} is a pose run with other settings ({'; '.join(diff)}); choose another --out")
    return True


def run_experiment(c: ExperimentConfig, progress: bool = True) -> dict[str, Any]:
    """Train every condition for every training size and seed; write the report.  Returns the
    summary (see :func:`summarise`)."""
    _check(c)
    out = Path(c.out)
    opts = data_options(c)
    train = open_dataset(c.data, **opts)
    val = open_dataset(c.val, layout=train.layout, **opts)
    test = open_dataset(c.test, layout=train.layout, **opts)
    oracle = open_dataset(c.oracle, layout=train.layout, **opts) if "oracle" in c.conditions else None
    for name, ds in (("data", train), ("val", val), ("test", test), ("oracle", oracle)):
        if ds is not None and len(ds) == 0:
            raise PosesynthError(f"--{name} {getattr(c, name)}: no usable images")
    if oracle is not None and len(oracle) < max(c.train_sizes):
        raise ConfigError(f"--oracle {c.oracle} has {len(oracle)} usable images, fewer than the largest training "
                          f"size {max(c.train_sizes)}: the oracle would train on fewer images than the other "
                          "conditions; give a larger --oracle or smaller --train-sizes")
    device = resolve_device(c.device)
    gan_device = resolve_gan_device(c.gan_device, device)
    spec = _posecfg(c, 0, False).posemaps
    renderers = {name: load_renderer(name, train.layout, spec, c.gan if name in GAN_RENDERERS else "", gan_device,
                                     "the experiment's pose runs") for name in c.conditions if name in RENDERED}
    judge = load_judge(c.judge, train.layout, gan_device) if c.judge else None
    # selection (validation PCK) may depend only on the training and validation data, never on
    # the test set: decoding and the people per image come from them; the test set is scored
    # with its own people and decoded as several people where it has them
    train_sets = [s for s in (train, val, oracle) if s is not None]
    max_people = max(max_people_of(s) for s in train_sets)
    multi = {"auto": max_people > 1, "true": True, "false": False}.get(str(c.multi_person).lower())
    if multi is None:
        raise ConfigError("multi_person must be auto, true or false")
    _check_out(out, c)
    results: list[dict[str, Any]] = []
    strips: dict[str, np.ndarray] = {}
    t_all = time.perf_counter()
    total = len(c.train_sizes) * c.seeds * len(c.conditions)
    done = 0
    for n in c.train_sizes:
        for seed in range(c.first_seed, c.first_seed + c.seeds):
            for cond in c.conditions:
                src = Subset(oracle if cond == "oracle" else train, n, seed)
                pcfg = _posecfg(c, seed, multi)
                fill = "render" if cond in RENDERED else ("real-dup" if cond == "real-dup" else "none")
                mixer = build_mixer(train.layout, spec, fill, renderer=renderers.get(cond), fraction=c.fraction,
                                    augment=c.augment, rare=c.rare, source=src, plausibility=c.plausibility,
                                    judge=judge, judge_pck=c.judge_pck, post_scale=c.post_scale,
                                    post_translate=c.post_translate, device=device, gan_device=gan_device, seed=seed)
                run = out / f"n{n}_seed{seed}_{cond}"
                done += 1
                if progress:
                    print(f"[experiment {done}/{total}, {(time.perf_counter() - t_all) / 60:.1f} min] "
                          f"{n} training images, seed {seed}, {cond}", flush=True)
                t = PoseNetTrainer(pcfg, run, source=src, val_source=val, progress=progress, batch_transform=mixer,
                                   resume=_resumable(run, pcfg))
                before = _render_counts(renderers.get(cond))
                if t.epoch < pcfg.epochs:
                    t.fit()
                results.append(_score(t, src, test, c, spec, max_people, n, seed, cond, mixer))
                if cond in renderers:   # this run's arms moved and left (the renderer is shared by the runs)
                    results[-1]["render_counts"] = _count_diff(_render_counts(renderers[cond]), before)
                if cond in RENDERED and cond not in strips and mixer.last is not None:
                    strips[cond] = _strip(mixer.last)
    summary = summarise(results, c)
    summary["seconds"] = time.perf_counter() - t_all
    summary["multi_person"] = multi
    for cond, img in strips.items():
        import cv2

        cv2.imwrite(str(out / f"rendered_{cond}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    atomic_write_json(out / "results.json", {"config": to_dict(c), "summary": summary, "runs": results}, indent=1)
    _plots(results, summary, c, out)
    _report(summary, c, out, sorted(strips))
    return summary


@torch.no_grad()
def _score(t: PoseNetTrainer, src: Subset, test: KeypointSource, c: ExperimentConfig, spec: PoseMapSpec,
           max_people: int, n: int, seed: int, cond: str, mixer: BatchMixer) -> dict[str, Any]:
    """Test figures at the validation-selected and the final epoch, and the train - test gap at
    each (``gap_PCK``, ``gap_loss`` at the selected epoch; ``gap_PCK_final``, ``gap_loss_final``
    at the last)."""
    from ..checkpoint import load_checkpoint, load_module

    weights = PoseLossWeights(t.cfg.w_heatmap, t.cfg.w_paf, t.cfg.w_mask, t.cfg.loss_reduction)
    test_people = max_people_of(test)   # every labelled test person is scored
    test_ds = _eval_set(test, c, spec, test_people)
    train_ds = _eval_set(src, c, spec, max_people)
    model = t.eval_model   # the moving average with --ema: what was validated and saved
    final = {k: v.detach().clone() for k, v in model.state_dict().items()}
    row: dict[str, Any] = {"n": n, "seed": seed, "cond": cond, "history": t.history, "best_epoch": t.best_epoch,
                           "mix": vars(mixer.stats),
                           "mixer": {k: v for k, v in mixer.describe().items() if k not in ("arms", "moved", "skipped")}}
    args = dict(layout=t.layout, multi_person=t.cfg.multi_person, threshold=t.cfg.decode_threshold,
                pck_alpha=t.cfg.pck_alpha, weights=weights, batch_size=c.batch_size, device=t.device)
    key = f"PCK@{t.cfg.pck_alpha:g}"
    for when in ("final", "best"):
        if when == "best":
            tensors, _ = load_checkpoint(t.run / "checkpoints" / "best")
            load_module(model, tensors, "model", str(t.run))
        te = evaluate_dataset(model, test_ds, **{**args, "multi_person": t.cfg.multi_person or test_people > 1})
        row[f"test_PCK_{when}"], row[f"test_AP_{when}"] = te[key], te["AP"]
        row[f"test_PCK_arms_{when}"] = te.get(f"{key}/arms", float("nan"))   # elbows and wrists
        row[f"test_loss_{when}"] = te.get("loss")
        tr = evaluate_dataset(model, train_ds, **args)
        tag = "" if when == "best" else "_final"
        row[f"train_PCK_{when}"], row[f"train_loss_{when}"] = tr[key], tr.get("loss")
        row[f"gap_PCK{tag}"] = tr[key] - te[key]
        row[f"gap_loss{tag}"] = te.get("loss", np.nan) - tr.get("loss", np.nan)
    model.load_state_dict(final)
    return row


def _render_counts(r: Any) -> dict[str, Any]:
    """A renderer's running counts of arms asked to move, moved and left (warp, refine)."""
    st = getattr(r, "stats", None) or {}
    return {"arms": st.get("arms", 0), "moved": st.get("moved", 0), "skipped": dict(st.get("skipped", {}))}


def _count_diff(now: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    return {"arms": now["arms"] - before["arms"], "moved": now["moved"] - before["moved"],
            "skipped": {k: v - before["skipped"].get(k, 0) for k, v in now["skipped"].items()
                        if v - before["skipped"].get(k, 0)}}


def _strip(last: dict[str, torch.Tensor], n: int = 6) -> np.ndarray:
    """Rows of source | render for the last replaced slots."""
    rows = [np.concatenate([tensor_to_image(s), tensor_to_image(r)], 1)
            for s, r in zip(last["source"][:n], last["render"][:n])]
    return np.concatenate(rows, 0) if rows else np.zeros((8, 8, 3), np.uint8)


# ---- summary ------------------------------------------------------------------------------
def _ms(v) -> tuple[float, float]:
    v = np.asarray([x for x in v if x is not None and np.isfinite(x)], float)
    if not len(v):
        return float("nan"), float("nan")
    return float(v.mean()), (float(v.std(ddof=1)) if len(v) > 1 else 0.0)


def paired_stats(diffs: "np.ndarray | list[float]", level: float = 0.95) -> dict[str, Any]:
    """Paired per-seed differences: their count, mean, sample sd, standard error, the t-based
    ``level`` confidence interval of the mean (``mean -+ t(1 - (1 - level)/2, n - 1) * sd / sqrt(n)``;
    undefined, ``nan``, with fewer than two seeds), the seeds ahead, and whether the interval
    excludes zero (``established``)."""
    d = np.asarray([x for x in diffs if x is not None and np.isfinite(x)], float)
    n = len(d)
    mean = float(d.mean()) if n else float("nan")
    sd = float(d.std(ddof=1)) if n > 1 else float("nan")
    se = sd / np.sqrt(n) if n > 1 else float("nan")
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * se) if n > 1 else float("nan")
    lo, hi = mean - half, mean + half
    return {"seeds": n, "diffs": d.tolist(), "diff_mean": mean, "diff_sd": sd, "diff_se": float(se),
            "ci_low": float(lo), "ci_high": float(hi), "level": level, "ahead": int((d > 0).sum()),
            "established": bool(n > 1 and np.isfinite(half) and (lo > 0 or hi < 0))}


def verdict(name: str, ref: str, e: dict[str, Any], what: str = "test PCK@0.2") -> str:
    """One sentence on a paired comparison: the mean difference, its t-based interval, the
    seeds ahead, and "exceeds the spread" only when the interval excludes zero."""
    if e["seeds"] < 2:
        return (f"{name} - {ref}: {e['diff_mean']:+.3f} {what} on {e['seeds']} seed: not established "
                "(a confidence interval needs at least 2 seeds)")
    pct = round(100 * e["level"])
    said = ("exceeds the spread (the interval excludes zero)" if e["established"] else
            "not established (the interval contains zero)")
    return (f"{name} - {ref}: {e['diff_mean']:+.3f} {what}, {pct}% CI [{e['ci_low']:+.3f}, {e['ci_high']:+.3f}] "
            f"over {e['seeds']} seeds, ahead on {e['ahead']} of {e['seeds']}: {said}")


def reported_keys(report_at: str = "best") -> dict[str, str]:
    """The run figures (keys of a run's row) that ``--report-at`` compares: test PCK, its
    elbows and wrists, test AP, training PCK, the train - test gaps in PCK and in loss, and the
    words for them (``when``)."""
    at = REPORT_AT[report_at]
    tag = "" if at == "best" else "_final"
    return {"test": f"test_PCK_{at}", "arms": f"test_PCK_arms_{at}", "ap": f"test_AP_{at}",
            "train": f"train_PCK_{at}", "gap": f"gap_PCK{tag}", "gap_loss": f"gap_loss{tag}",
            "when": "the validation-selected epoch" if at == "best" else "the last epoch"}


def summarise(results: list[dict[str, Any]], c: ExperimentConfig) -> dict[str, Any]:
    """Per training size: each condition's mean and sample sd over seeds; for every other
    condition the paired per-seed comparison with the baseline (and each renderer's with
    real-dup), with a t-based 95% interval; each renderer's share of the oracle gap; and whether
    the comparison means anything: the baseline must overfit (its training PCK at least
    ``overfit_gap`` above its test PCK) and have converged (the selected epoch before the last
    in most runs: validation peaked before the end; this reads the selection under
    ``--report-at last`` too).  The figures compared are those of ``c.report_at``
    (:func:`reported_keys`), at the selected epoch or the last."""
    keys = reported_keys(c.report_at)
    rows = []
    for n in c.train_sizes:
        row: dict[str, Any] = {"n": n, "conditions": {}}
        for cond in c.conditions:
            rs = [r for r in results if r["n"] == n and r["cond"] == cond]
            row["conditions"][cond] = {
                k: dict(zip(("mean", "sd"), _ms([r.get(k) for r in rs])))
                for k in ("test_PCK_best", "test_PCK_final", "test_AP_best", "test_AP_final", "train_PCK_best",
                          "train_PCK_final", "gap_PCK", "gap_PCK_final", "gap_loss", "gap_loss_final", "best_epoch",
                          "test_PCK_arms_best", "test_PCK_arms_final")}
        rs = [r for r in results if r["n"] == n]
        row["compare"], row["compare_real_dup"] = _comparisons(rs, c.conditions, keys["test"],
                                                               f"test PCK@0.2 at {keys['when']}")
        # a secondary measure: the same comparisons on the elbows and wrists alone (the joints
        # the renders move); the verdicts are on all joints
        arms = _comparisons(rs, c.conditions, keys["arms"], f"test PCK@0.2 of the elbows and wrists at {keys['when']}")
        row["compare_arms"] = {"baseline": arms[0], "real-dup": arms[1]}
        last = [r["best_epoch"] >= len(r["history"]) for r in results if r["n"] == n and r.get("history")]
        gap = row["conditions"].get("baseline", {}).get(keys["gap"], {}).get("mean", float("nan"))
        row["baseline_overfits"] = bool(np.isfinite(gap) and gap >= c.overfit_gap)
        row["selected_last_epoch"] = float(np.mean(last)) if last else float("nan")
        row["converged"] = bool(last and np.mean(last) <= 0.5)
        row["meaningful"] = row["baseline_overfits"] and row["converged"]
        if not row["converged"]:
            row["note"] = (f"the selected epoch is the last one in {100 * row['selected_last_epoch']:.0f}% of the runs: "
                           "the networks had not converged, so no verdict")
        elif not np.isfinite(gap):
            row["note"] = (f"the baseline's train - test gap was not measured at {keys['when']} (rerun into the "
                           "same --out to score its runs again), so no verdict")
        elif not row["baseline_overfits"]:
            row["note"] = (f"the baseline does not overfit (training PCK - test PCK {gap:+.3f}, below "
                           f"{c.overfit_gap:g}): fitting, not overfitting, limits it, so no verdict")
        else:
            row["note"] = ""
        rows.append(row)
    return {"rows": rows, "metric": f"test PCK@0.2 at {keys['when']}", "report_at": c.report_at, "keys": keys}


def _comparisons(rs: list[dict[str, Any]], conditions: "list[str] | tuple[str, ...]", key: str,
                 what: str = "test PCK@0.2") -> tuple[dict[str, Any], dict[str, Any]]:
    """Paired per-seed comparisons of ``key`` over the runs ``rs`` (one training size): every
    condition but the oracle against the baseline (with the share of the oracle gap closed),
    and every rendered condition against real-dup."""
    score = {cond: {r["seed"]: r.get(key, float("nan")) for r in rs if r["cond"] == cond} for cond in conditions}
    comp: dict[str, Any] = {}
    comp_dup: dict[str, Any] = {}
    for cond in conditions:
        for ref, table in (("baseline", comp), ("real-dup", comp_dup)):
            if cond in (ref, "oracle", "baseline") or not score.get(ref) or (ref == "real-dup" and cond not in RENDERED):
                continue
            seeds = sorted(set(score[ref]) & set(score[cond]))
            entry = paired_stats([score[cond][s] - score[ref][s] for s in seeds])
            entry["verdict"] = verdict(cond, ref, entry, what)
            entry["exceeds_spread"] = entry["established"]
            if ref == "baseline" and score.get("oracle"):
                paired = [s for s in seeds if s in score["oracle"]]   # oracle gap over the same seeds, paired
                if paired:
                    gap = float(np.mean([score["oracle"][s] - score[ref][s] for s in paired]))
                    closed = float(np.mean([score[cond][s] - score[ref][s] for s in paired]))
                    entry["oracle_gap"] = gap
                    # a share of the gap means something only when the oracle is above the baseline
                    entry["oracle_share"] = closed / gap if gap > 1e-9 else float("nan")
            table[cond] = entry
    return comp, comp_dup


def best_renderer(row: dict[str, Any]) -> "str | None":
    """The rendered condition with the highest mean paired difference from the baseline."""
    cands = [(v["diff_mean"], k) for k, v in row["compare"].items() if k in RENDERED and np.isfinite(v["diff_mean"])]
    return max(cands)[1] if cands else None


# ---- report -------------------------------------------------------------------------------
_COLOURS = {"baseline": "tab:blue", "real-dup": "tab:gray", "warp": "tab:green", "gan": "tab:orange", "refine": "tab:red",
            "oracle": "tab:purple"}


def _plots(results: list[dict[str, Any]], summary: dict[str, Any], c: ExperimentConfig, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conds = list(c.conditions)
    keys = reported_keys(c.report_at)
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for ax, key, label in zip(axes, (keys["test"], keys["ap"], keys["gap"]),
                              (f"test PCK@0.2 ({keys['when']})", f"test OKS AP ({keys['when']})",
                               f"train PCK - test PCK ({keys['when']})")):
        if len(c.train_sizes) == 1:  # one training size: bars, not a line over one x value
            row = summary["rows"][0]["conditions"]
            mu = [row[k][key]["mean"] for k in conds]
            sd = [row[k][key]["sd"] for k in conds]
            ax.bar(range(len(conds)), mu, yerr=sd, capsize=4, color=[_COLOURS[k] for k in conds])
            for j, k in enumerate(conds):  # every seed as a dot
                v = [r.get(key, np.nan) for r in results if r["cond"] == k]
                ax.plot(np.full(len(v), j) + np.linspace(-0.15, 0.15, len(v)), v, "k.", ms=5)
            ax.set_xticks(range(len(conds)), conds, rotation=20)
            ax.set_title(f"{label}\n{c.train_sizes[0]} training images", fontsize=9)
        else:
            for j, k in enumerate(conds):
                mu = [r["conditions"][k][key]["mean"] for r in summary["rows"]]
                sd = [r["conditions"][k][key]["sd"] for r in summary["rows"]]
                ax.errorbar(np.array(c.train_sizes) * (1 + 0.02 * (j - len(conds) / 2)), mu, yerr=sd, marker="o",
                            capsize=3, color=_COLOURS[k], label=k)
            ax.set_xscale("log", base=2)
            ax.set_xlabel("training images")
            ax.set_title(label, fontsize=9)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "comparison.png", dpi=90)
    plt.close(fig)

    fig, axes = plt.subplots(len(c.train_sizes), 3, figsize=(14, 3.4 * len(c.train_sizes)), squeeze=False)
    for row_ax, n in zip(axes, c.train_sizes):
        for k in conds:
            rs = [r for r in results if r["n"] == n and r["cond"] == k]
            if not rs:
                continue
            m = min(len(r["history"]) for r in rs)
            ep = np.arange(1, m + 1)
            for ax, key, style in ((row_ax[0], "train_loss", "-"), (row_ax[0], "val_loss", "--"),
                                   (row_ax[1], "train_loss_replaced", ":"), (row_ax[2], "val_PCK@0.2", "-")):
                arr = np.array([[h.get(key, np.nan) for h in r["history"][:m]] for r in rs], float)
                if not np.isfinite(arr).any():
                    continue
                mu, sd = np.nanmean(arr, 0), np.nanstd(arr, 0)
                ax.plot(ep, mu, style, color=_COLOURS[k], label=f"{k} {key.replace('_', ' ')}")
                ax.fill_between(ep, mu - sd, mu + sd, color=_COLOURS[k], alpha=0.12)
        row_ax[0].set_title(f"{n} images: loss on real training slots (-) and validation (--)", fontsize=9)
        row_ax[0].set_yscale("log")
        row_ax[1].set_title("loss on the replaced slots", fontsize=9)
        row_ax[2].set_title("validation PCK@0.2 (selects the epoch)", fontsize=9)
        for ax in row_ax:
            ax.set_xlabel("epoch")
            if ax.lines:
                ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=80)
    plt.close(fig)


def _f(v, d: int = 3) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{v:.{d}f}"


def _comparison_cells(name: str, ref: str, v: dict[str, Any]) -> str:
    """A comparison's table row up to its verdict (the row left open for more cells)."""
    return (f"<tr><td>{html.escape(name)} - {ref}</td><td>{_f(v['diff_mean'])} ± {_f(v['diff_sd'])}</td>"
            f"<td>[{_f(v['ci_low'])}, {_f(v['ci_high'])}]</td><td>{v['ahead']} of {v['seeds']}</td>"
            f"<td>{'exceeds the spread' if v['established'] else 'not established'}</td>")


def _report(summary: dict[str, Any], c: ExperimentConfig, out: Path, strips: list[str]) -> None:
    conds = list(c.conditions)
    keys = reported_keys(c.report_at)
    when = keys["when"]
    parts = []
    for row in summary["rows"]:
        cs = row["conditions"]
        body = "".join(
            f"<tr><td>{html.escape(k)}</td>"
            + "".join(f"<td>{_f(cs[k][m]['mean'])} ± {_f(cs[k][m]['sd'])}</td>"
                      for m in ("test_PCK_best", "test_PCK_final", keys["ap"], keys["train"], keys["gap"],
                                keys["gap_loss"]))
            + f"<td>{_f(cs[k]['best_epoch']['mean'], 1)}</td>"
            + f"<td>{_f(cs[k][keys['arms']]['mean'])} ± {_f(cs[k][keys['arms']]['sd'])}</td></tr>"
            for k in conds)
        comp = "".join(
            _comparison_cells(k, ref, v)
            + (f"<td>{_f(100 * v['oracle_share'], 0)}%</td></tr>" if np.isfinite(v.get("oracle_share", np.nan)) else
               "<td>n/a: the oracle is not above the baseline</td></tr>" if "oracle_gap" in v else "<td>n/a</td></tr>")
            for ref, table in (("baseline", row["compare"]), ("real-dup", row.get("compare_real_dup", {})))
            for k, v in table.items())
        arms = "".join(_comparison_cells(k, ref, v) + "</tr>"
                       for ref, table in row.get("compare_arms", {}).items() for k, v in table.items())
        note = (f"<p><b>No verdict:</b> {html.escape(row['note'])}.</p>" if row.get("note") else
                "<p>The baseline overfits and the runs converged: the comparisons below are meaningful.</p>")
        parts.append(f"""<h2>{row['n']} training images</h2>
<table><tr><th>condition</th><th>test PCK@0.2 (val-selected)</th><th>test PCK@0.2 (final)</th>
<th>test AP ({when})</th><th>train PCK ({when})</th><th>gap: train - test PCK ({when})</th>
<th>gap: test - train loss ({when})</th><th>selected epoch</th><th>test PCK@0.2, elbows and wrists ({when})</th></tr>
{body}</table>{note}
<p>Paired by seed (difference in test PCK@0.2 at {when}), with the t-based 95% confidence
interval of the mean difference; it "exceeds the spread" only when that interval excludes zero:</p>
<table><tr><th>comparison</th><th>mean difference ± sd over seeds</th><th>95% CI</th><th>ahead on</th>
<th>verdict</th><th>share of the oracle gap closed</th></tr>{comp}</table>
<p>A secondary measure, the same pairs on the elbows and wrists alone (the joints the renders move; the verdicts
above are on all joints):</p>
<table><tr><th>comparison</th><th>mean difference ± sd over seeds</th><th>95% CI</th><th>ahead on</th>
<th>verdict</th></tr>{arms}</table>""")
    strip_html = "".join(f"<h3>{html.escape(k)}: source | render (last replaced slots)</h3>"
                         f"<img src='rendered_{html.escape(k)}.png'>" for k in strips)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>posesynth: overfitting experiment</title>
<style>body{{font-family:sans-serif;max-width:1400px;margin:auto}}td,th{{padding:4px 8px;border-bottom:1px solid #ddd}}
img{{max-width:100%}}</style></head><body><h1>Does rendering new poses reduce overfitting?</h1>
<p>Pose network {html.escape(c.backbone)} ({html.escape(c.heads)} heads) at {c.size[0]}x{c.size[1]}, {c.epochs} epochs x
{c.steps_per_epoch} steps x batch {c.batch_size} ({html.escape(c.lr_schedule)} learning rate from {c.lr:g}{
f", weights averaged with decay {c.ema:g}" if c.ema else ""}{f", from {html.escape(c.init)}" if c.init else ""}) in every
condition, {c.seeds} seed(s) each{f" ({c.first_seed} to {c.first_seed + c.seeds - 1})" if c.first_seed else ""},
the same data transforms and
the same post-mix resize and translation. Rendered conditions replace {c.fraction:.0%} of every batch with renders of
<b>{html.escape(c.augment)}</b> poses; real-dup fills the same slots with other real training images; the oracle trains
on as many real images from the held-out pose distribution. Checkpoints are selected on {html.escape(c.val)}; the test set
{html.escape(c.test)} is only reported. The comparisons are on {when}{"" if c.report_at == "best" else
" (--report-at last: the network at the end of the budget, whatever validation says)"}. PCK counts every labelled person
({'multi-person decoding' if summary.get('multi_person') else 'single-person decoding'}).
Mean ± standard deviation over seeds.</p>
{''.join(parts)}
<h2>Test accuracy and gap</h2><img src="comparison.png">
<h2>Curves (mean ± sd over seeds)</h2><img src="curves.png">
{strip_html}
</body></html>"""
    atomic_write_text(out / "report.html", page)
