"""Training the pose network (``posesynth train-posenet``), on one process or data-parallel
under ``torchrun`` (gloo on CPU, nccl on GPU).

Run directory::

    RUN/config.yaml
    RUN/checkpoints/latest.*   model, optimizer, scheduler, epoch, history (resume)
    RUN/checkpoints/best.*     the model with the best validation metric
    RUN/history.csv            per-epoch train/validation losses and metrics
    RUN/curves.png             the curves
    RUN/tb/                    TensorBoard (when installed)
"""
from __future__ import annotations

import csv
import io
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from ..checkpoint import load_checkpoint, load_module, module_tensors, optimizer_from_flat, optimizer_to_flat, save_checkpoint
from ..config import save_config, to_dict
from ..datasets.formats import KeypointSource, open_dataset
from ..datasets.layouts import KeypointLayout
from ..datasets.posemaps import PoseMapSpec
from ..datasets.torch_dataset import EpochBatchSampler, PoseMapDataset
from ..datasets.transforms import Compose, Photometric, RandomAffine
from ..errors import ConfigError, PosesynthError
from ..io import atomic_write_text
from .decode import decode_people, decode_single
from .losses import PoseLossWeights, pose_loss
from .metrics import PoseMetrics
from .model import NAMED_HEADS, PoseNet, PoseNetConfig

__all__ = ["PoseTrainConfig", "PoseNetTrainer", "load_posenet", "predict_batch"]

log = logging.getLogger(__name__)


@dataclass
class PoseTrainConfig:
    """Settings of a pose-network run (all overridable on the command line)."""

    data: str = field(default="", metadata={"help": "training dataset"})
    val: str = field(default="", metadata={"help": "validation dataset (default: none)"})
    layout: str = field(default="", metadata={"help": "convert the data to this layout (default: its own)"})
    size: tuple[int, int] = field(default=(384, 384), metadata={"help": "network input H,W (multiples of 32)"})
    backbone: str = field(default="pvt_v2_b1", metadata={"help": "pvt_v2_b0|pvt_v2_b1|pvt_v2_b2"})
    pretrained: str = field(default="auto", metadata={"help": "auto (local cache only)|none|PATH to weights"})
    heads: str = field(default="medium", metadata={"help": "|".join(NAMED_HEADS)})
    optimizer: str = field(default="adamw", metadata={"help": "adamw|sgd (sgd: momentum 0.9 as the original)"})
    lr: float = 1e-3
    weight_decay: float = field(default=5e-7, metadata={"help": "as the original"})
    epochs: int = 30
    batch_size: int = 8
    w_heatmap: float = 100.0
    w_paf: float = 100.0
    w_mask: float = 1.0
    loss_reduction: str = field(default="mean", metadata={"help": "mean|sum (sum: the original's per-sample SSE)"})
    sigma: float = 7.0
    paf_width: float = 8.0
    augment: bool = True
    plateau_factor: float = 0.8
    plateau_patience: int = 4
    early_stop: int = field(default=0, metadata={"help": "stop after this many epochs without improvement (0: off)"})
    best_metric: str = field(default="PCK@0.2", metadata={"help": "validation metric that selects the best checkpoint"})
    pck_alpha: float = 0.2
    multi_person: bool = field(default=False, metadata={"help": "decode several people with PAFs (else fast single-person)"})
    decode_threshold: float = 0.1
    device: str = "cpu"
    seed: int = 0
    workers: int = 0
    time_limit_min: float = field(default=0.0, metadata={"help": "stop after the epoch that passes this budget (0: none)"})
    steps_per_epoch: int = field(default=0, metadata={"help": "0: one pass over the training data"})

    def validate(self) -> None:
        if any(s % 32 or s < 64 for s in self.size):
            raise ConfigError(f"size {self.size} must be multiples of 32, at least 64")
        if self.optimizer not in ("adamw", "sgd"):
            raise ConfigError(f"optimizer must be adamw or sgd, not {self.optimizer!r}")
        if self.heads not in NAMED_HEADS:
            raise ConfigError(f"heads must be one of {list(NAMED_HEADS)}")
        if self.loss_reduction not in ("mean", "sum"):
            raise ConfigError("loss_reduction must be mean or sum")


def _dist() -> tuple[int, int, int]:
    """(rank, world, local_rank), initialising torch.distributed when torchrun started us."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))
    return 0, 1, 0


def predict_batch(model: torch.nn.Module, images: torch.Tensor, layout: KeypointLayout, multi_person: bool,
                  threshold: float = 0.1) -> tuple[list[np.ndarray], list[np.ndarray], "np.ndarray | None", tuple]:
    """Run the network and decode: per image ``(P, K, 3)`` keypoints in input pixels, person scores,
    mask probabilities ``(B, M, H, W)`` and the raw outputs."""
    hm, paf, mask = model(images)
    size = tuple(images.shape[-2:])
    hm_np, paf_np = hm.float().cpu().numpy(), paf.float().cpu().numpy()
    kps, scores = [], []
    for i in range(hm_np.shape[0]):
        if multi_person:
            kp, sc = decode_people(hm_np[i], paf_np[i], layout, size, threshold)
        else:
            kp, s = decode_single(hm_np[i], size, threshold)
            sc = np.array([float(s[s > threshold].mean()) if (s > threshold).any() else 0.0], np.float32)
        kps.append(kp)
        scores.append(sc)
    return kps, scores, (mask.float().cpu().numpy() if mask is not None else None), (hm, paf, mask)


class PoseNetTrainer:
    """Builds the pose network for ``cfg`` and trains it; see the module docstring.

    ``batch_hook(batch, step) -> batch`` (optional) may replace part of each training batch,
    e.g. with generated images (the GAN-in-the-loop augmentation).
    """

    def __init__(self, cfg: PoseTrainConfig, run_dir: "str | Path", source: "KeypointSource | None" = None,
                 val_source: "KeypointSource | None" = None, resume: bool = False, progress: bool = True,
                 batch_hook: "Callable[[dict, int], dict] | None" = None) -> None:
        cfg.validate()
        self.cfg, self.run = cfg, Path(run_dir)
        self.rank, self.world, local = _dist()
        self.main = self.rank == 0
        self.progress = progress and self.main
        dev = cfg.device
        if dev.startswith("cuda") and self.world > 1:
            dev = f"cuda:{local}"
        self.device = torch.device(dev)
        self.source = source if source is not None else open_dataset(cfg.data, layout=cfg.layout or None, on_error="skip")
        self.layout = self.source.layout
        self.val_source = val_source
        if self.val_source is None and cfg.val:
            self.val_source = open_dataset(cfg.val, layout=self.layout, on_error="skip")
        if self.val_source is not None and self.val_source.layout.keypoints != self.layout.keypoints:
            raise ConfigError(f"validation data is in layout '{self.val_source.layout.name}', training data in "
                              f"'{self.layout.name}'")
        spec = PoseMapSpec(cfg.sigma, cfg.paf_width)
        tf = Compose([RandomAffine(None, scale=(0.75, 1.25), aspect=(0.9, 1.1), rotate=20, translate=0.1,
                                   flip_prob=0.5, layout=self.layout), Photometric()]) if cfg.augment else None
        self.dataset = PoseMapDataset(self.source, tuple(cfg.size), tf, 4, spec, with_maps=False, seed=cfg.seed)
        self.val_dataset = (PoseMapDataset(self.val_source, tuple(cfg.size), None, 4, spec, with_maps=False)
                            if self.val_source is not None else None)
        torch.manual_seed(cfg.seed)
        self.model_cfg = PoseNetConfig(self.layout.num_keypoints, self.layout.num_limbs, self.layout.num_masks,
                                       cfg.backbone, cfg.pretrained, cfg.heads)
        self.model = PoseNet(self.model_cfg).to(self.device)
        self.ddp = (torch.nn.parallel.DistributedDataParallel(self.model, device_ids=[self.device] if
                    self.device.type == "cuda" else None) if self.world > 1 else self.model)
        params = [p for p in self.model.parameters() if p.requires_grad]
        if cfg.optimizer == "sgd":
            self.opt = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
        else:
            self.opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.sched = torch.optim.lr_scheduler.ReduceLROnPlateau(self.opt, mode="max", factor=cfg.plateau_factor,
                                                                patience=cfg.plateau_patience)
        self.weights = PoseLossWeights(cfg.w_heatmap, cfg.w_paf, cfg.w_mask, cfg.loss_reduction)
        self.batch_hook = batch_hook
        self.epoch = 0
        self.best = -math.inf
        self.stale = 0
        self.history: list[dict[str, Any]] = []
        if resume:
            self._load(self.run / "checkpoints" / "latest")
        elif (self.run / "checkpoints" / "latest.json").exists():
            raise ConfigError(f"{self.run} already holds a run: pass --resume to continue it, or choose another --out")
        if self.main:
            self.run.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.run / "config.yaml")
        self._tb = None
        if self.main:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.run / "tb"))
            except Exception:
                pass

    # ---- checkpoints -------------------------------------------------------------------
    def _meta(self) -> dict[str, Any]:
        return {"kind": "posesynth-posenet", "epoch": self.epoch, "best": self.best, "stale": self.stale,
                "config": to_dict(self.cfg), "model": to_dict(self.model_cfg), "layout": self.layout.to_dict(),
                "sigma": self.cfg.sigma, "paf_width": self.cfg.paf_width}

    def save(self, name: str, with_optimizer: bool = True) -> None:
        if not self.main:
            return
        tensors = module_tensors(self.model, "model")
        meta = self._meta()
        if with_optimizer:
            t, s = optimizer_to_flat(self.opt, "opt")
            tensors.update(t)
            meta["opt"] = s
            meta["sched"] = {k: v for k, v in self.sched.state_dict().items() if not callable(v)}
            meta["history"] = self.history
        save_checkpoint(self.run / "checkpoints" / name, tensors, meta)

    def _load(self, path: Path) -> None:
        tensors, meta = load_checkpoint(path)
        load_module(self.model, tensors, "model", str(path))
        optimizer_from_flat(self.opt, tensors, meta["opt"], "opt")
        self.sched.load_state_dict(meta["sched"])
        self.epoch, self.best, self.stale = int(meta["epoch"]), float(meta["best"]), int(meta["stale"])
        self.history = meta.get("history", [])

    # ---- loops -------------------------------------------------------------------------
    def _to(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}

    def steps_per_epoch(self) -> int:
        return self.cfg.steps_per_epoch or max(len(self.dataset) // (self.cfg.batch_size * self.world), 1)

    def train_epoch(self) -> dict[str, float]:
        c = self.cfg
        spe = self.steps_per_epoch()
        start = self.epoch * spe
        sampler = EpochBatchSampler(len(self.dataset), c.batch_size, c.seed, start, start + spe, self.rank, self.world)
        loader = torch.utils.data.DataLoader(self.dataset, batch_sampler=sampler, num_workers=c.workers,
                                             pin_memory=self.device.type == "cuda")
        self.ddp.train()
        sums: dict[str, float] = {}
        bar = tqdm(loader, total=spe, desc=f"epoch {self.epoch + 1}/{c.epochs}", disable=not self.progress,
                   dynamic_ncols=True, leave=False)
        for i, batch in enumerate(bar):
            batch = self._to(batch)
            if self.batch_hook is not None:
                batch = self.batch_hook(batch, start + i)
            pred = self.ddp(batch["image"])
            loss, parts = pose_loss(pred, batch, self.weights)
            if not torch.isfinite(loss):
                log.warning("epoch %d step %d: non-finite loss, step skipped", self.epoch + 1, i)
                continue
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.set_postfix(loss=f"{parts['loss']:.4g}")
        return self._reduce({k: v / spe for k, v in sums.items()})

    def _reduce(self, d: dict[str, float]) -> dict[str, float]:
        if self.world == 1:
            return d
        keys = sorted(d)
        t = torch.tensor([d[k] for k in keys], dtype=torch.float64)
        dist.all_reduce(t)
        return {k: float(v) / self.world for k, v in zip(keys, t)}

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Validation loss and metrics, computed on every rank's shard and combined."""
        if self.val_dataset is None:
            return {}
        self.model.eval()
        metrics = PoseMetrics(self.layout, self.cfg.pck_alpha)
        sums: dict[str, float] = {}
        n = 0
        idx = list(range(self.rank, len(self.val_dataset), self.world))
        bs = self.cfg.batch_size
        for s in range(0, len(idx), bs):
            items = [self.val_dataset[i] for i in idx[s:s + bs]]
            batch = self._to({k: torch.stack([it[k] for it in items]) for k in ("image", "heatmaps", "pafs", "masks",
                                                                              "keypoints")})
            kps, scores, mask, raw = predict_batch(self.model, batch["image"], self.layout, self.cfg.multi_person,
                                                   self.cfg.decode_threshold)
            _, parts = pose_loss(raw, batch, self.weights)
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v * len(items)
            n += len(items)
            gt = batch["keypoints"].cpu().numpy()
            mgt = batch["masks"].cpu().numpy()
            for i in range(len(items)):
                metrics.add(gt[i], kps[i], scores[i], tuple(self.cfg.size),
                            mask[i] if mask is not None else None, mgt[i] if mask is not None else None)
        if self.world > 1:
            gathered: list = [None] * self.world
            dist.all_gather_object(gathered, (sums, n, metrics))
            sums, n = {}, 0
            merged = PoseMetrics(self.layout, self.cfg.pck_alpha)
            for s_, n_, m_ in gathered:
                for k, v in s_.items():
                    sums[k] = sums.get(k, 0.0) + v
                n += n_
                merged.gts += m_.gts
                merged.preds += m_.preds
                merged.scores += m_.scores
                merged.sizes += m_.sizes
                for a in ("correct", "counted", "err_sum", "found"):
                    setattr(merged, a, getattr(merged, a) + getattr(m_, a))
                merged.inter += m_.inter
                merged.union += m_.union
                merged.mask_sum += m_.mask_sum
            metrics = merged
        out = {f"val_{k}": v / max(n, 1) for k, v in sums.items()}
        out.update({f"val_{k}": v for k, v in metrics.result().items() if not k.startswith("px_error/")})
        return out

    def fit(self) -> dict[str, Any]:
        c = self.cfg
        t0 = time.perf_counter()
        last: dict[str, Any] = {}
        while self.epoch < c.epochs:
            te = time.perf_counter()
            train = self.train_epoch()
            val = self.validate()
            self.epoch += 1
            row = {"epoch": self.epoch, **{f"train_{k}": v for k, v in train.items()}, **val,
                   "lr": self.opt.param_groups[0]["lr"], "seconds": time.perf_counter() - te,
                   "images_per_s": self.steps_per_epoch() * c.batch_size * self.world / (time.perf_counter() - te)}
            self.history.append(row)
            key = f"val_{c.best_metric}"
            score = val.get(key, -train.get("loss", 0.0))
            if not np.isfinite(score):
                score = -math.inf
            self.sched.step(score)
            improved = score > self.best
            if improved:
                self.best, self.stale = score, 0
                self.save("best", with_optimizer=False)
            else:
                self.stale += 1
            self.save("latest")
            if self.main:
                self._write_history()
                if self._tb is not None:
                    for k, v in row.items():
                        if isinstance(v, (int, float)) and k != "epoch":
                            self._tb.add_scalar(k.replace("_", "/", 1), v, self.epoch)
                if self.progress:
                    shown = {k: row[k] for k in ("train_loss", "val_loss", f"val_{c.best_metric}", "val_AP") if k in row}
                    print(f"epoch {self.epoch}/{c.epochs}: " + ", ".join(f"{k} {v:.4g}" for k, v in shown.items())
                          + (" (best)" if improved else ""), flush=True)
            last = row
            if c.early_stop and self.stale >= c.early_stop:
                if self.progress:
                    print(f"early stop: {self.stale} epochs without a better {c.best_metric}")
                break
            if c.time_limit_min and time.perf_counter() - t0 > c.time_limit_min * 60:
                if self.progress:
                    print(f"time limit of {c.time_limit_min:g} min reached after epoch {self.epoch}")
                break
        return last

    def _write_history(self) -> None:
        keys: list[str] = []
        for r in self.history:
            keys += [k for k in r if k not in keys]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=keys)
        w.writeheader()
        w.writerows(self.history)
        atomic_write_text(self.run / "history.csv", buf.getvalue())
        plot_curves(self.history, self.run / "curves.png", self.cfg.best_metric)


def plot_curves(history: list[dict[str, Any]], path: Path, metric: str = "PCK@0.2", title: str = "") -> None:
    """Training/validation losses and validation metrics against epochs, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [r["epoch"] for r in history]
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    for k, style in (("train_loss", "-"), ("val_loss", "--")):
        ys = [r.get(k, np.nan) for r in history]
        if np.isfinite(ys).any():
            ax[0].plot(ep, ys, style, label=k.replace("_", " "))
    ax[0].set_xlabel("epoch")
    ax[0].set_ylabel("loss")
    ax[0].set_yscale("log")
    if ax[0].lines:
        ax[0].legend()
    for k in (f"val_{metric}", "val_AP", "val_mask_IoU"):
        ys = [r.get(k, np.nan) for r in history]
        if np.isfinite(ys).any():
            ax[1].plot(ep, ys, label=k[4:])
    ax[1].set_xlabel("epoch")
    ax[1].set_ylim(0, 1)
    if ax[1].lines:
        ax[1].legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    from ..io import atomic_write_bytes

    atomic_write_bytes(path, buf.getvalue())


def load_posenet(run_dir: "str | Path", device: "str | torch.device" = "cpu", checkpoint: str = "best"
                 ) -> tuple[PoseNet, KeypointLayout, dict[str, Any]]:
    """A trained pose network (eval mode, frozen), its layout and metadata."""
    run = Path(run_dir)
    path = run / "checkpoints" / checkpoint
    if not path.with_suffix(".json").exists() and checkpoint == "best":
        path = run / "checkpoints" / "latest"
    tensors, meta = load_checkpoint(path)
    if meta.get("kind") != "posesynth-posenet":
        raise PosesynthError(f"{path}: not a posesynth pose-network checkpoint")
    mc = dict(meta["model"])
    mc["pretrained"] = "none"  # the checkpoint holds all weights
    model = PoseNet(PoseNetConfig(**mc))
    load_module(model, tensors, "model", str(path))
    model.to(device).eval().requires_grad_(False)
    return model, KeypointLayout.from_dict(meta["layout"], source=str(path)), meta
