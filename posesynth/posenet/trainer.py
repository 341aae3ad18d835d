"""Training the pose network (``posesynth train-posenet``), on one process or data-parallel
under ``torchrun`` (NCCL on CUDA, gloo on CPU, chosen from the device actually used).

Run directory::

    RUN/config.yaml
    RUN/checkpoints/latest.*, previous.*   model, optimizer, scheduler, epoch, history (resume)
    RUN/checkpoints/best.*     the model with the best validation metric
    RUN/history.csv            per-epoch train/validation losses and metrics
    RUN/curves.png             the curves
    RUN/tb/                    TensorBoard (when installed)

With ``--ema D`` the weights validated, selected and saved as ``model`` (what ``evaluate``,
``predict`` and ``--init`` load) are an exponential moving average of the trained ones
(decay ``min(D, (1 + n) / (10 + n))`` after ``n`` steps; BatchNorm statistics copied); the
trained weights travel in ``latest`` as ``train_model`` for an exact resume.  It smooths the
step-to-step jitter of a small-batch run, so the selected epoch depends less on luck.
``--lr-schedule cosine`` sets the learning rate of epoch ``e + 1`` (``e`` from 0) to
``--lr x (0.01 + 0.99 (1 + cos(pi e / epochs)) / 2)``: ``--lr`` in the first epoch, falling
towards 1% (1.3% in the last of 30); the plateau scheduler is then unused.  The schedule
spans ``--epochs``: resuming with more epochs stretches what is left of it.

A ``batch_transform(batch, step) -> batch``, given by whoever builds the trainer (``posesynth
augment`` gives one for ``train-posenet --renderer/--gan`` and the experiment), may replace
part of each batch.  Replaced
slots are marked by ``batch["replaced"]``; the training loss is logged over the other (real)
slots as ``train_loss`` and over the replaced ones as ``train_loss_replaced``, so runs with and
without replacement compare like with like.

Data parallel: each rank sees its own share of every global batch; all ranks decide together
to skip a step with a non-finite loss; rank 0 decides the time limit and early stop and
broadcasts it; validation metrics are gathered over ranks.
"""
from __future__ import annotations

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

from ..checkpoint import load_checkpoint, load_module, optimizer_from_flat, optimizer_to_flat
from ..config import check_numbers, to_dict
from ..datasets.formats import DataOptions, KeypointSource, data_options, open_dataset
from ..datasets.posemaps import PoseMapSpec
from ..datasets.torch_dataset import EpochBatchSampler, PoseMapDataset, max_people_of
from ..datasets.transforms import FIT_MODES, Compose, Photometric, RandomAffine
from ..errors import ConfigError, PosesynthError
from ..runs import Precision, RunDir, WeightAverage, resolve_device
from .evaluate import evaluate_dataset
from .load import load_posenet, predict_batch
from .losses import PoseLossWeights, pose_loss
from .model import NAMED_HEADS, PoseNet, PoseNetConfig

__all__ = ["PoseTrainConfig", "PoseNetTrainer", "load_posenet", "predict_batch", "plot_curves", "init_distributed",
           "shutdown_distributed"]

log = logging.getLogger(__name__)


#: every numeric option's allowed values (config.check_numbers; other floats must be finite)
POSE_NUMBERS = {"max_people": ">=0", "lr": ">=0", "weight_decay": ">=0", "epochs": ">=1", "batch_size": ">=1",
                "w_heatmap": ">=0", "w_paf": ">=0", "w_mask": ">=0", "sigma": ">0", "paf_width": ">0",
                "plateau_factor": "(0,1)", "plateau_patience": ">=0", "early_stop": ">=0", "pck_alpha": ">0",
                "decode_threshold": "[0,1)", "seed": ">=0", "workers": ">=0", "time_limit_min": ">=0",
                "steps_per_epoch": ">=0", "ema": "[0,1)"}


@dataclass
class PoseTrainConfig:
    """Settings of a pose-network run (all overridable on the command line)."""

    data: str = field(default="", metadata={
        "help": "training dataset: a folder or annotation file, or several of one layout as A,B:WEIGHT (WEIGHT: the "
                "share a dataset gets, x its size) (required, here or in --config)"})
    val: str = field(default="", metadata={
        "help": "validation dataset: selects the best epoch, drives the LR plateau and early stop (unset: no "
                "validation; the last epoch is kept)"})
    layout: str = field(default="", metadata={"help": "convert the data to this layout (default: its own)"})
    data_options: DataOptions = field(default_factory=DataOptions, metadata={"help": "how the data is read"})
    size: tuple[int, int] = field(default=(384, 384), metadata={"help": "network input H,W (multiples of 32)"})
    fit: str = field(default="letterbox", metadata={"help": "letterbox (keep the aspect ratio)|stretch"})
    max_people: int = field(default=0, metadata={"help": "people kept per image (0: the dataset's maximum, "
                                                         "capped at 16)"})
    backbone: str = field(default="pvt_v2_b1", metadata={"help": "pvt_v2_b0|pvt_v2_b1|pvt_v2_b2"})
    pretrained: str = field(default="auto", metadata={
        "help": "backbone weights: auto (timm's ImageNet weights when they are in the local timm cache, "
                "~/.cache/huggingface/hub; else random, with a note)|none|PATH (timm's model.safetensors of "
                "timm/<backbone>.in1k)"})
    init: str = field(default="", metadata={
        "help": "start from this train-posenet run's weights (its best checkpoint, else its latest): fine-tuning, "
                "e.g. from a network trained on synthetic scenes; its layout, pose maps and network must be this "
                "run's (unset: random or --pretrained)"})
    heads: str = field(default="medium", metadata={"help": "|".join(NAMED_HEADS)})
    optimizer: str = field(default="adamw", metadata={"help": "adamw|sgd (sgd: momentum 0.9 as the original)"})
    lr: float = field(default=1e-3, metadata={"help": "learning rate (AdamW or SGD)"})
    weight_decay: float = field(default=5e-7, metadata={"help": "as the original"})
    epochs: int = field(default=30, metadata={"help": "training epochs in all, counting those of a resumed run"})
    batch_size: int = field(default=8, metadata={"help": "images per step (per process under torchrun)"})
    w_heatmap: float = field(default=100.0, metadata={"help": "loss weight of the heatmaps (MSE)"})
    w_paf: float = field(default=100.0, metadata={"help": "loss weight of the PAFs (MSE)"})
    w_mask: float = field(default=1.0, metadata={"help": "loss weight of the masks (Dice-BCE)"})
    loss_reduction: str = field(default="mean", metadata={"help": "mean|sum (sum: the original's per-sample SSE)"})
    sigma: float = field(default=7.0, metadata={"help": "heatmap Gaussian sigma in input pixels"})
    paf_width: float = field(default=8.0, metadata={"help": "PAF half-width in input pixels"})
    data_augment: bool = field(default=True, metadata={"help": "random scale/rotation/shift/flip and colour changes"})
    plateau_factor: float = field(default=0.8, metadata={
        "help": "learning-rate factor when validation stops improving (ReduceLROnPlateau)"})
    plateau_patience: int = field(default=4, metadata={
        "help": "epochs without a better validation metric before the learning rate drops"})
    early_stop: int = field(default=0, metadata={"help": "stop after this many epochs without improvement (0: off)"})
    lr_schedule: str = field(default="plateau", metadata={
        "help": "plateau (drop by --plateau-factor when validation stalls)|cosine (per epoch, from --lr towards 1% "
                "of it after the last epoch)"})
    ema: float = field(default=0.0, metadata={
        "help": "decay of an exponential moving average of the weights, which is what is validated and saved "
                "(0: off; e.g. 0.99)"})
    best_metric: str = field(default="PCK@0.2", metadata={"help": "validation metric that selects the best checkpoint"})
    pck_alpha: float = field(default=0.2, metadata={"help": "PCK threshold as a fraction of the torso size"})
    multi_person: bool = field(default=False, metadata={"help": "decode several people with PAFs (else fast single-person)"})
    decode_threshold: float = field(default=0.1, metadata={
        "help": "heatmap peak needed for a keypoint to count as found"})
    device: str = field(default="auto", metadata={"help": "auto (cuda:LOCAL_RANK when CUDA is there, else cpu)|cpu|cuda:N"})
    precision: str = field(default="auto", metadata={"help": "auto (bf16 on CUDA, fp32 on CPU)|fp32|bf16|fp16"})
    seed: int = field(default=0, metadata={
        "help": "seed of the weights' initialisation, the data order, augmentation and renders"})
    workers: int = field(default=0, metadata={"help": "DataLoader worker processes (0: load in the main process)"})
    time_limit_min: float = field(default=0.0, metadata={"help": "stop after the epoch that passes this budget (0: none)"})
    steps_per_epoch: int = field(default=0, metadata={"help": "0: one pass over the training data"})

    def validate(self) -> None:
        if any(s % 32 or s < 64 for s in self.size):
            raise ConfigError(f"size {self.size} must be multiples of 32, at least 64")
        if self.optimizer not in ("adamw", "sgd"):
            raise ConfigError(f"optimizer must be adamw or sgd, not {self.optimizer!r}")
        if self.heads not in NAMED_HEADS:
            raise ConfigError(f"heads must be one of {list(NAMED_HEADS)}")
        if self.lr_schedule not in ("plateau", "cosine"):
            raise ConfigError(f"lr_schedule must be plateau or cosine, not {self.lr_schedule!r}")
        if self.loss_reduction not in ("mean", "sum"):
            raise ConfigError("loss_reduction must be mean or sum")
        if self.fit not in FIT_MODES:
            raise ConfigError(f"fit must be one of {FIT_MODES}, not {self.fit!r}")
        check_numbers(self, POSE_NUMBERS)

    @property
    def posemaps(self) -> PoseMapSpec:
        return PoseMapSpec(self.sigma, self.paf_width, 4, tuple(self.size))


_OWN_GROUP = False   # init_distributed created the process group (shutdown_distributed destroys it)


def init_distributed(device_spec: str = "auto") -> tuple[int, int, int, torch.device]:
    """``(rank, world, local_rank, device)``: the device for this process (``auto``:
    ``cuda:LOCAL_RANK`` with CUDA, else cpu; made current on CUDA), and torch.distributed
    initialised when torchrun started us, with NCCL for CUDA devices and gloo otherwise."""
    global _OWN_GROUP
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_spec, local, world)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        _OWN_GROUP = True
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), local, device
    return 0, 1, local, device


def shutdown_distributed() -> None:
    """Destroy the process group :func:`init_distributed` created (no-op otherwise): at the end
    of ``train-posenet`` under torchrun, so ranks exit without NCCL's warnings."""
    global _OWN_GROUP
    if _OWN_GROUP and dist.is_initialized():
        dist.destroy_process_group()
    _OWN_GROUP = False


class PoseNetTrainer:
    """Builds the pose network for ``cfg`` and trains it; see the module docstring.

    ``batch_transform(batch, step) -> batch`` (optional), given by whoever builds the trainer,
    may replace part of each training batch (``posesynth.augment`` builds one that renders
    perturbed poses).  A transform with an ``attach(dataset)`` method gets the training dataset.
    The trainer knows nothing else of it.
    """

    def __init__(self, cfg: PoseTrainConfig, run_dir: "str | Path", source: "KeypointSource | None" = None,
                 val_source: "KeypointSource | None" = None, resume: bool = False, progress: bool = True,
                 batch_transform: "Callable[[dict, int], dict] | None" = None) -> None:
        cfg.validate()
        self.cfg, self.run = cfg, Path(run_dir)
        self.rank, self.world, self.local_rank, self.device = init_distributed(cfg.device)
        self.main = self.rank == 0
        self.dir = RunDir(self.run, self.main)
        self.progress = progress and self.main
        self.precision = Precision(cfg.precision, self.device)
        self.source = source if source is not None else open_dataset(cfg.data, layout=cfg.layout or None,
                                                                                       **data_options(cfg))
        if len(self.source) == 0:
            raise PosesynthError(f"{cfg.data or 'the training data'}: no usable training images")
        self.layout = self.source.layout
        self.val_source = val_source
        if self.val_source is None and cfg.val:
            self.val_source = open_dataset(cfg.val, layout=self.layout, **data_options(cfg))
        if self.val_source is not None and self.val_source.layout.keypoints != self.layout.keypoints:
            raise ConfigError(f"validation data is in layout '{self.val_source.layout.name}', training data in "
                              f"'{self.layout.name}'")
        self.spec = cfg.posemaps
        self.max_people = cfg.max_people or max(max_people_of(self.source),
                                                max_people_of(self.val_source) if self.val_source is not None else 1)
        tf = Compose([RandomAffine(None, scale=(0.75, 1.25), aspect=(0.9, 1.1), rotate=20, translate=0.1,
                                   flip_prob=0.5, layout=self.layout), Photometric()]) if cfg.data_augment else None
        self.dataset = PoseMapDataset(self.source, tuple(cfg.size), tf, self.spec.stride, self.spec, self.max_people,
                                      with_maps=False, seed=cfg.seed, fit=cfg.fit)
        self.val_dataset = (PoseMapDataset(self.val_source, tuple(cfg.size), None, self.spec.stride, self.spec,
                                           self.max_people, with_maps=False, fit=cfg.fit, with_original=True)
                            if self.val_source is not None else None)
        torch.manual_seed(cfg.seed)
        self.model_cfg = PoseNetConfig(self.layout.num_keypoints, self.layout.num_limbs, self.layout.num_masks,
                                       cfg.backbone, cfg.pretrained, cfg.heads)
        self.model = PoseNet(self.model_cfg).to(self.device)
        if cfg.init and not resume:
            self._init_from(cfg.init)
        if self.device.type == "cuda":
            self.model.to(memory_format=torch.channels_last)
            torch.backends.cudnn.benchmark = True
        self.average = WeightAverage(self.model, cfg.ema) if cfg.ema > 0 else None
        self.ddp = (torch.nn.parallel.DistributedDataParallel(self.model, device_ids=[self.device] if
                    self.device.type == "cuda" else None) if self.world > 1 else self.model)
        params = [p for p in self.model.parameters() if p.requires_grad]
        if cfg.optimizer == "sgd":
            self.opt = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
        else:
            self.opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        if cfg.lr_schedule == "cosine":
            total = cfg.epochs   # epoch index e (from 0) trains at lr x f(e); f reaches 0.01 at e = epochs
            self.sched = torch.optim.lr_scheduler.LambdaLR(
                self.opt, lambda e: 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(e, total) / total)))
        else:
            self.sched = torch.optim.lr_scheduler.ReduceLROnPlateau(self.opt, mode="max", factor=cfg.plateau_factor,
                                                                    patience=cfg.plateau_patience)
        self.weights = PoseLossWeights(cfg.w_heatmap, cfg.w_paf, cfg.w_mask, cfg.loss_reduction)
        self.batch_transform = batch_transform
        if batch_transform is not None and hasattr(batch_transform, "attach"):
            batch_transform.attach(self.dataset)
        self.epoch = 0
        self.best = -math.inf
        self.best_epoch = 0
        self.stale = 0
        self.skipped_steps = 0
        self.history: list[dict[str, Any]] = []
        self.dir.prepare(cfg, resume)
        if resume:
            self._load()

    @property
    def eval_model(self) -> PoseNet:
        """The weights that are validated and saved as ``model``: the moving average with
        ``--ema``, else the trained ones."""
        return self.average.module if self.average is not None else self.model

    # ---- checkpoints -------------------------------------------------------------------
    def _meta(self) -> dict[str, Any]:
        return {"kind": "posesynth-posenet", "epoch": self.epoch, "step": self.epoch, "best": self.best,
                "best_epoch": self.best_epoch, "stale": self.stale, "skipped_steps": self.skipped_steps,
                "ema_updates": self.average.updates if self.average is not None else 0,
                "config": to_dict(self.cfg), "model": to_dict(self.model_cfg), "layout": self.layout.to_dict(),
                "posemaps": self.spec.to_dict(), "max_people": self.max_people,
                "sigma": self.cfg.sigma, "paf_width": self.cfg.paf_width}

    def save(self, name: str, with_optimizer: bool = True) -> None:
        if not self.main:
            return
        tensors = WeightAverage.tensors(self.average, self.model, "model", "train_model", with_optimizer)
        meta = self._meta()
        if with_optimizer:
            t, s = optimizer_to_flat(self.opt, "opt")
            tensors.update(t)
            meta["opt"] = s
            meta["sched"] = {k: v for k, v in self.sched.state_dict().items() if not callable(v)}
            meta["history"] = self.history
            meta["grad_scaler"] = self.precision.state_dict()   # fp16: the loss scale, for an exact resume
        self.dir.save(name, tensors, meta)

    def _init_from(self, run: str) -> None:
        """Load another pose run's network weights (best, else latest), refusing a run with
        another layout, masks, pose maps or network."""
        path = Path(run) / "checkpoints" / "best"
        if not path.with_suffix(".json").exists():
            path = Path(run) / "checkpoints" / "latest"
        if not path.with_suffix(".json").exists():
            raise ConfigError(f"--init {run}: no pose-network checkpoint there (checkpoints/best or latest)")
        tensors, meta = load_checkpoint(path)
        if meta.get("kind") != "posesynth-posenet":
            raise ConfigError(f"--init {run}: not a train-posenet run ({meta.get('kind', 'unknown kind')})")
        lay = meta.get("layout", {})
        if lay.get("keypoints") != list(self.layout.keypoints) or lay.get("masks", []) != list(self.layout.masks):
            raise ConfigError(f"--init {run}: it predicts layout '{lay.get('name')}' ({len(lay.get('keypoints', []))} "
                              f"keypoints, masks {lay.get('masks', [])}), this run '{self.layout.name}' "
                              f"({self.layout.num_keypoints} keypoints, masks {list(self.layout.masks)})")
        theirs = PoseMapSpec.from_meta(meta)
        if not theirs.same_maps(self.spec):
            raise ConfigError(f"--init {run}: it learned pose maps with sigma {theirs.sigma:g}, PAF width "
                              f"{theirs.paf_width:g}, stride {theirs.stride}; this run draws sigma {self.spec.sigma:g}, "
                              f"PAF width {self.spec.paf_width:g}, stride {self.spec.stride}")
        mine = to_dict(self.model_cfg)
        diff = [f"{k} {meta['model'].get(k)!r} there, {v!r} here" for k, v in mine.items()
                if k != "pretrained" and meta["model"].get(k) != v]
        if diff:
            raise ConfigError(f"--init {run}: another network ({'; '.join(diff)})")
        load_module(self.model, tensors, "model", str(path))
        log.info("initialised from %s (epoch %s)", path, meta.get("epoch"))

    def _load(self) -> None:
        tensors, meta = self.dir.load("latest")
        path = self.dir.ckpt / "latest"
        theirs = (meta.get("config") or {}).get("lr_schedule", "plateau")
        if theirs != self.cfg.lr_schedule:
            raise ConfigError(f"{path}: trained with --lr-schedule {theirs}; resume it with the same schedule, "
                              f"not {self.cfg.lr_schedule}")
        WeightAverage.load(self.average, self.model, tensors, meta, "model", "train_model", str(path))
        optimizer_from_flat(self.opt, tensors, meta["opt"], "opt")
        self.sched.load_state_dict(meta["sched"])
        self.precision.load_state_dict(meta.get("grad_scaler"))
        self.epoch, self.best, self.stale = int(meta["epoch"]), float(meta["best"]), int(meta["stale"])
        self.best_epoch = int(meta.get("best_epoch", 0))
        self.skipped_steps = int(meta.get("skipped_steps", 0))
        self.history = meta.get("history", [])
        best = self.dir.ckpt / "best"
        if (self.dir.ckpt / "best.json").exists() or (self.dir.ckpt / "best.safetensors").exists():
            # a best saved after the state we resume from (a crash between saving best and latest)
            # or a torn best pair no longer describes self.best: remove it and let the next epoch
            # save a best again.  Every rank decides the same from the same files.
            why = ""
            try:
                if int(load_checkpoint(best, fallback=False)[1].get("epoch", 0)) > self.epoch:
                    why = "it is from a later epoch than the resumed state"
            except PosesynthError as e:
                why = str(e)
            if why:
                if self.world > 1:
                    dist.barrier()   # every rank has read the files before rank 0 removes them
                if self.main:
                    for suffix in (".json", ".safetensors"):
                        (self.dir.ckpt / f"best{suffix}").unlink(missing_ok=True)
                    log.warning("resuming at epoch %d: removed the best checkpoint (%s); the next epoch saves a "
                                "new one", self.epoch, why)
                self.best, self.best_epoch = -math.inf, 0

    # ---- loops -------------------------------------------------------------------------
    def _to(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}

    def steps_per_epoch(self) -> int:
        return self.cfg.steps_per_epoch or max(len(self.dataset) // (self.cfg.batch_size * self.world), 1)

    def _all_finite(self, loss: torch.Tensor) -> bool:
        """Whether the loss is finite on every rank (decided together, so no rank waits alone)."""
        ok = torch.isfinite(loss.detach()).float().reshape(1)
        if self.world > 1:
            dist.all_reduce(ok, op=dist.ReduceOp.MIN)
        return bool(ok.item() > 0)

    def train_epoch(self) -> dict[str, float]:
        c = self.cfg
        spe = self.steps_per_epoch()
        start = self.epoch * spe
        sampler = EpochBatchSampler(len(self.dataset), c.batch_size, c.seed, start, start + spe, self.rank, self.world)
        loader = torch.utils.data.DataLoader(self.dataset, batch_sampler=sampler, num_workers=c.workers,
                                             pin_memory=self.device.type == "cuda")
        self.ddp.train()
        sums: dict[str, float] = {}
        counts: dict[str, float] = {}
        bar = tqdm(loader, total=spe, desc=f"epoch {self.epoch + 1}/{c.epochs}", disable=not self.progress,
                   dynamic_ncols=True, leave=False)
        for i, batch in enumerate(bar):
            batch = self._to(batch)
            if self.batch_transform is not None:
                batch = self.batch_transform(batch, start + i)
            images = batch["image"]
            if self.device.type == "cuda":
                images = images.contiguous(memory_format=torch.channels_last)
            with self.precision.autocast():
                pred = self.ddp(images)
                loss, parts = pose_loss(pred, batch, self.weights)
            if not self._all_finite(loss):
                self.skipped_steps += 1
                log.warning("epoch %d step %d: non-finite loss on a rank, step skipped on every rank",
                            self.epoch + 1, i)
                self.opt.zero_grad(set_to_none=True)
                continue
            self.opt.zero_grad(set_to_none=True)
            self.precision.backward(loss)
            if self.precision.step(self.opt):
                if self.average is not None:
                    self.average.update(self.model)
            for k, v in self._split_losses(pred, batch, parts).items():
                sums[k] = sums.get(k, 0.0) + v[0]
                counts[k] = counts.get(k, 0.0) + v[1]
            bar.set_postfix(loss=f"{parts['loss']:.4g}")
        return self._reduce(sums, counts)

    @torch.no_grad()
    def _split_losses(self, pred: tuple, batch: dict, parts: dict[str, float]) -> dict[str, tuple[float, float]]:
        """Loss terms over the real slots (``loss``, ``hm``, ...) and over the replaced ones
        (``*_replaced``), as ``(sum, count)`` weighted by the number of samples."""
        rep = batch.get("replaced")
        n = batch["image"].shape[0]
        if rep is None or not bool(rep.any()):
            return {k: (v * n, n) for k, v in parts.items()}
        out: dict[str, tuple[float, float]] = {}
        for name, sel in (("", ~rep), ("_replaced", rep)):
            m = int(sel.sum())
            if m == 0:
                continue
            sub_pred = tuple(p[sel].float() if p is not None else None for p in pred)
            sub_t = {k: batch[k][sel] for k in ("heatmaps", "pafs", "masks", "mask_valid") if k in batch}
            _, sp = pose_loss(sub_pred, sub_t, self.weights)
            out.update({k + name: (v * m, m) for k, v in sp.items()})
        return out

    _LOSS_KEYS = ("loss", "hm", "paf", "mask")

    def _reduce(self, sums: dict[str, float], counts: dict[str, float]) -> dict[str, float]:
        """Sample-weighted means over every rank.  The key set is fixed (the loss terms over the
        real and over the replaced slots), so every rank reduces a tensor of the same size even
        when one of them had no real or no replaced slot; a term no rank saw is left out."""
        keys = sorted(set(sums) | {k + s for k in self._LOSS_KEYS for s in ("", "_replaced")})
        sums = {k: sums.get(k, 0.0) for k in keys}
        counts = {k: counts.get(k, 0.0) for k in keys}
        if self.world > 1:
            t = torch.tensor([sums[k] for k in keys] + [counts[k] for k in keys], dtype=torch.float64,
                             device=self.device)
            dist.all_reduce(t)
            vals = t.tolist()
            sums = dict(zip(keys, vals[:len(keys)]))
            counts = dict(zip(keys, vals[len(keys):]))
        return {k: sums[k] / counts[k] for k in keys if counts[k] > 0}

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Validation loss and metrics (in the images' own frame), computed on every rank's
        shard and combined."""
        if self.val_dataset is None:
            return {}
        if self.world > 1:
            # BatchNorm running statistics are updated by each rank's own last forward pass;
            # score every shard with rank 0's (the ones checkpointed), as one process would
            for b in self.eval_model.buffers():
                dist.broadcast(b.data, 0)
        res = evaluate_dataset(self.eval_model, self.val_dataset, self.layout, self.cfg.multi_person,
                               self.cfg.decode_threshold, self.cfg.pck_alpha, self.weights, self.cfg.batch_size,
                               self.device, self.rank, self.world)
        # per-joint figures (px_error/<joint>, PCK@a/<joint>, PCK@a/arms) stay out of the history
        return {f"val_{k}": v for k, v in res.items() if "/" not in k}

    def _decide_stop(self, t0: float) -> "str | None":
        """Rank 0 decides whether to stop (early stop or time limit) and tells every rank."""
        c = self.cfg
        why = 0.0
        if self.main:
            if c.early_stop and self.stale >= c.early_stop:
                why = 1.0
            elif c.time_limit_min and time.perf_counter() - t0 > c.time_limit_min * 60:
                why = 2.0
        if self.world > 1:
            t = torch.tensor([why], device=self.device)
            dist.broadcast(t, 0)
            why = float(t.item())
        return {0.0: None, 1.0: "early stop", 2.0: "time limit"}[why]

    def fit(self) -> dict[str, Any]:
        c = self.cfg
        t0 = time.perf_counter()
        last: dict[str, Any] = {}
        if c.early_stop and self.stale >= c.early_stop:
            if self.progress:
                print(f"{self.run}: stopped early at epoch {self.epoch} ({self.stale} epochs without a better "
                      f"{c.best_metric}); nothing to train")
            return last   # resumed from a run that had already stopped early
        if self.epoch >= c.epochs and self.progress:
            print(f"{self.run}: already trained {self.epoch} of {c.epochs} epochs; nothing to train "
                  f"(--epochs N with N > {self.epoch} continues it)")
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
            if val and key not in val:
                raise ConfigError(f"best_metric {c.best_metric!r} is not a validation figure; choose one of "
                                  f"{sorted(k[4:] for k in val)}")
            score = val[key] if val else -train.get("loss", math.inf)
            if not np.isfinite(score):
                score = -math.inf
            if c.lr_schedule == "cosine":
                self.sched.step()
            else:
                self.sched.step(score)
            improved = score > self.best
            if improved:
                self.best, self.stale, self.best_epoch = score, 0, self.epoch
                self.save("best", with_optimizer=False)
            else:
                self.stale += 1
            self.save("latest")
            if self.main:
                self._write_history()
                self.dir.scalars("epoch", {k: v for k, v in row.items() if k != "epoch"}, self.epoch)
                if self.progress:
                    shown = {k: row[k] for k in ("train_loss", "train_loss_replaced", "val_loss", key, "val_AP")
                             if k in row}
                    print(f"epoch {self.epoch}/{c.epochs}: " + ", ".join(f"{k} {v:.4g}" for k, v in shown.items())
                          + (" (best)" if improved else ""), flush=True)
            last = row
            stop = self._decide_stop(t0)
            if stop:
                if self.progress:
                    print(f"{stop} after epoch {self.epoch}" + (f": {self.stale} epochs without a better "
                                                                 f"{c.best_metric}" if stop == "early stop" else ""))
                break
        return last

    def _write_history(self) -> None:
        self.dir.write_csv("history.csv", self.history)
        plot_curves(self.history, self.run / "curves.png", self.cfg.best_metric)


def plot_curves(history: list[dict[str, Any]], path: Path, metric: str = "PCK@0.2", title: str = "") -> None:
    """Training/validation losses and validation metrics against epochs, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [r["epoch"] for r in history]
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    for k, style in (("train_loss", "-"), ("train_loss_replaced", ":"), ("val_loss", "--")):
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
