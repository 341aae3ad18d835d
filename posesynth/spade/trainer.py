"""Training a pose-to-image generator (``posesynth train-gan``): the loop, optimisers,
checkpoints, logging, gallery, and the losses every architecture shares: adversarial
(``--gan-mode hinge|ls|wgan-gp``), feature matching, VGG19 perceptual (where its weights
exist), pose consistency (``--pose-judge``) and L1 to the real image (inside the
architecture's region where it has one, else over the whole image), on the image D sees.

What differs between architectures (``--arch spade|pix2pix|vanilla|nearest``; spade's
``--mode full|inpaint|refine``) is in one module each under :mod:`posesynth.spade.archs`; their
defaults for options not given in :data:`~posesynth.spade.config.ARCH_DEFAULTS`.

Run directory: ``config.yaml`` (the resolved GANConfig), ``checkpoints/`` (latest, previous:
G, D, optimisers, step, arch, mode, pose-map settings, the person's pose statistics for
``transfer``; with ``--ema`` G is the weights' moving average, which every renderer loads,
and the trained weights are ``G_train``), ``losses.csv`` (one row per step), ``web/index.html``
(the gallery, every ``gallery_every`` steps) and ``tb/`` (TensorBoard, when installed).

Every random draw in step ``s`` comes from generators seeded by ``(seed, s)``, and batches
from :class:`~posesynth.datasets.torch_dataset.EpochBatchSampler`, so ``--resume``
continues exactly: on CPU the losses match an uninterrupted run.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import load_module, module_tensors, optimizer_from_flat, optimizer_to_flat
from ..config import to_dict
from ..datasets.formats import KeypointSource, data_options, open_dataset
from ..datasets.geometry import RegionSpec
from ..datasets.layouts import KeypointLayout
from ..datasets.placement import source_pose_stats
from ..datasets.torch_dataset import EpochBatchSampler, PoseMapDataset, max_people_of
from ..datasets.transforms import RandomAffine
from ..errors import ConfigError, PosesynthError
from ..runs import Precision, RunDir, WeightAverage, resolve_device, training_bar
from .archs import arch_class
from .config import ARCH_DEFAULTS, ARCHS, MODES, GANConfig, keep_saved_losses
from .discriminator import discriminate
from .load import check_resumable, load_generator
from .losses import (PoseConsistencyLoss, feature_matching_loss, gan_loss, gradient_penalty, load_pose_judge,
                     perceptual_loss)

__all__ = ["GANConfig", "GANTrainer", "TrainingError", "load_generator", "MODES", "ARCHS", "ARCH_DEFAULTS",
           "keep_saved_losses"]

log = logging.getLogger(__name__)


class TrainingError(PosesynthError):
    """Training cannot go on (e.g. too many non-finite steps)."""


class GANTrainer:
    """Builds the architecture's G and D and the losses for ``cfg`` in ``run_dir``, and trains
    them on ``source`` (default: ``open_dataset(cfg.data)``).  ``pose_judge``: a frozen pose
    network for the pose-consistency loss (image in [-1, 1] -> heatmaps, PAFs, mask).
    ``dataset``: the training items (default: a :class:`PoseMapDataset` of ``source`` at
    ``cfg.size``, with flips and small affine changes); an architecture that trains on prepared
    samples (refine mode's warp round trips) is given them here.
    """

    def __init__(self, cfg: GANConfig, run_dir: "str | Path", source: "KeypointSource | None" = None,
                 pose_judge: "nn.Module | None" = None, resume: bool = False, progress: bool = True,
                 dataset: "torch.utils.data.Dataset | None" = None) -> None:
        cfg.validate()
        self.cfg, self.run, self.dir, self.progress = cfg, Path(run_dir), RunDir(run_dir), progress
        self.device = resolve_device(cfg.device)
        self.precision = Precision(cfg.precision, self.device)
        self.precision_d = Precision(cfg.precision, self.device)
        self.source = source if source is not None else (dataset.source if dataset is not None else open_dataset(
            cfg.data, layout=cfg.layout or None, **data_options(cfg)))
        self.layout: KeypointLayout = self.source.layout
        self.spec = cfg.posemaps
        self.region_spec = RegionSpec(radius=cfg.region_radius)
        self.arch = arch_class(cfg.arch, cfg.mode)(cfg, self.layout, self.spec)
        self.learned = self.arch.learned
        if dataset is None:
            if self.arch.prepared_samples:   # posesynth.augment.refine gives them (as train-gan does)
                raise ConfigError(f"{self.arch.describe(cfg)} trains on prepared samples: give the trainer dataset=")
            tf = RandomAffine(None, scale=(0.9, 1.1), aspect=(0.95, 1.05), rotate=5, translate=0.05, flip_prob=0.5,
                              layout=self.layout) if cfg.augment else None
            # the people beyond max_people would be in the image but missing from the maps
            dataset = PoseMapDataset(self.source, tuple(cfg.size), tf, stride=self.spec.stride, spec=self.spec,
                                     seed=cfg.seed, with_maps=self.arch.needs_maps,
                                     max_people=max_people_of(self.source))
        self.dataset = dataset
        torch.manual_seed(cfg.seed)
        # G, then D (one random stream); None for an architecture that has no such network
        self.G, self.D = (m.to(self.device) if m is not None else None
                          for m in (self.arch.build_generator(), self.arch.build_discriminator()))
        if self.learned and cfg.channels_last:
            self.G.to(memory_format=torch.channels_last)
            self.D.to(memory_format=torch.channels_last)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.average = WeightAverage(self.G, cfg.ema) if self.learned and cfg.ema > 0 else None
        if self.learned:
            self.opt_g = torch.optim.Adam(self.G.parameters(), lr=cfg.lr_g, betas=(cfg.beta1, cfg.beta2))
            self.opt_d = torch.optim.Adam(self.D.parameters(), lr=cfg.lr_d, betas=(cfg.beta1, cfg.beta2))
        self.vgg = perceptual_loss(cfg.vgg, cfg.vgg_weights, cfg.lambda_vgg) if self.learned else None
        if self.vgg is not None:
            self.vgg.to(self.device)
        if not self.learned and (pose_judge is not None or cfg.pose_judge):
            raise ConfigError(f"--pose-judge trains a generator; {cfg.arch} is not trained")
        if pose_judge is None and cfg.pose_judge:
            pose_judge = load_pose_judge(cfg.pose_judge, self.layout, self.spec, self.device, f"this GAN run ({self.run})")
        self.pose_loss = None if pose_judge is None else PoseConsistencyLoss(
            pose_judge.to(self.device), cfg.lambda_pose_hm, cfg.lambda_pose_paf, cfg.lambda_pose_mask)
        self.step = self.bad_steps = self.skipped_steps = 0
        if len(self.source) == 0:
            raise PosesynthError(f"{cfg.data}: no usable training images")
        self.dir.prepare(cfg, resume)
        self.target: "dict[str, Any] | None" = None
        if resume:
            self._load()
        else:
            try:   # where the person stands in its frames, for transfer
                self.target = source_pose_stats(self.source, name="the training data", max_samples=2000).to_dict()
            except PosesynthError as e:
                log.info("no pose statistics for transfer: %s", e)

    # ---- set-up ------------------------------------------------------------------------
    def _loader(self, start: int) -> torch.utils.data.DataLoader:
        sampler = EpochBatchSampler(len(self.dataset), self.cfg.batch_size, self.cfg.seed, start, self.cfg.steps)
        return torch.utils.data.DataLoader(self.dataset, batch_sampler=sampler, num_workers=self.cfg.workers,
                                           persistent_workers=False, pin_memory=self.device.type == "cuda")

    # ---- checkpoints -------------------------------------------------------------------
    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors = WeightAverage.tensors(self.average, self.G, "G", "G_train")   # G: the average with --ema
        meta = {"kind": "posesynth-gan", "arch": self.cfg.arch, "mode": self.cfg.mode, "step": self.step,
                "skipped_steps": self.skipped_steps, "config": to_dict(self.cfg),
                "ema_updates": self.average.updates if self.average is not None else 0,
                "generator": self.arch.generator_meta(self.G), "layout": self.layout.to_dict(),
                "posemaps": self.spec.to_dict(), "region": dataclasses.asdict(self.region_spec),
                "target": self.target, "fit": getattr(self.dataset, "fit", "letterbox"), **self.arch.meta()}
        if self.learned:
            tensors.update(module_tensors(self.D, "D"))
            tg, meta["opt_g"] = optimizer_to_flat(self.opt_g, "opt_g")
            td, meta["opt_d"] = optimizer_to_flat(self.opt_d, "opt_d")
            tensors.update(tg)
            tensors.update(td)
            meta["grad_scaler"] = {"g": self.precision.state_dict(), "d": self.precision_d.state_dict()}
        return tensors, meta

    def save(self, name: str = "latest") -> None:
        self.dir.save(name, *self.state())

    def _load(self) -> None:
        tensors, meta = self.dir.load("latest")
        path = self.dir.ckpt / "latest"
        check_resumable(meta, self.layout, self.cfg.arch, self.cfg.mode, str(path))
        self.target = meta.get("target")
        self.step = int(meta["step"])
        if not self.learned:
            self.G = self.arch.rebuild(meta, tensors, str(path)).to(self.device)
            return
        WeightAverage.load(self.average, self.G, tensors, meta, "G", "G_train", str(path))
        load_module(self.D, tensors, "D", str(path))
        self.precision.load_state_dict(meta.get("grad_scaler", {}).get("g"))    # fp16: the loss scales
        self.precision_d.load_state_dict(meta.get("grad_scaler", {}).get("d"))
        optimizer_from_flat(self.opt_g, tensors, meta["opt_g"], "opt_g")
        optimizer_from_flat(self.opt_d, tensors, meta["opt_d"], "opt_d")
        self.skipped_steps = int(meta.get("skipped_steps", 0))

    # ---- one step ----------------------------------------------------------------------
    def _lr_factor(self, step: int) -> float:
        c = self.cfg
        return 1.0 if c.decay_from < 0 or step < c.decay_from else max(
            0.0, 1.0 - (step - c.decay_from) / max(c.steps - c.decay_from, 1))

    def _to(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        cl = torch.channels_last if self.cfg.channels_last else torch.contiguous_format
        return {k: (v.to(self.device, non_blocking=True).contiguous(memory_format=cl) if v.dim() == 4 else
                    v.to(self.device, non_blocking=True)) for k, v in batch.items() if torch.is_tensor(v)}

    def _discriminate(self, b: dict[str, torch.Tensor], fake: torch.Tensor, real: torch.Tensor, real_graph=True):
        return discriminate(self.D, self.arch.d_input(b, fake), self.arch.d_input(b, real), targets_only=not real_graph)

    def train_step(self, batch: dict[str, Any]) -> "dict[str, float] | None":
        """One generator and one discriminator update; returns the losses, or ``None`` when
        the step was skipped for a non-finite loss."""
        c = self.cfg
        torch.manual_seed((c.seed * 1_000_003 + self.step) % (2**63))   # every draw of step s from (seed, s)
        b = self.arch.prepare(self._to(batch), self.step)
        real = b["image"]
        for opt in (self.opt_g, self.opt_d):
            for grp in opt.param_groups:
                grp["lr"] = (c.lr_g if opt is self.opt_g else c.lr_d) * self._lr_factor(self.step)
        # --- generator
        self.D.requires_grad_(False)
        with self.precision.autocast():
            raw, fake = self.arch.generate(self.G, b)
            if c.lambda_feat:
                pf, pr = self._discriminate(b, fake, real, real_graph=False)
                losses: dict[str, torch.Tensor] = {"g_gan": gan_loss(pf, True, c.gan_mode, for_discriminator=False),
                                                   "g_feat": feature_matching_loss(pf, pr) * c.lambda_feat}
            else:   # without feature matching, G's loss needs D on the fake alone
                losses = {"g_gan": gan_loss(self.D(self.arch.d_input(b, fake)), True, c.gan_mode,
                                            for_discriminator=False)}
            if self.vgg is not None:
                losses["g_vgg"] = self.vgg(fake, real) * c.lambda_vgg
            extra: dict[str, float] = {}
            if self.pose_loss is not None:
                losses["g_pose"], extra = self.pose_loss(fake, b["heatmaps"], b["pafs"], b["masks"], b.get("mask_valid"))
            region = self.arch.l1_region(b)
            if region is not None:
                w = region.float()
                losses["g_l1"] = ((raw.float() - real.float()).abs() * w).sum() / (w.sum() * 3).clamp_min(1.0) * c.lambda_l1
            elif c.lambda_l1:
                losses["g_l1"] = F.l1_loss(raw.float(), real.float()) * c.lambda_l1
        g_total = sum(v.float() for v in losses.values())
        self.opt_g.zero_grad(set_to_none=True)
        if not torch.isfinite(g_total):
            return self._bad_step("generator", g_total)
        self.precision.backward(g_total)
        if self.precision.step(self.opt_g) and self.average is not None:   # not after a skipped fp16 step
            self.average.update(self.G)
        # --- discriminator
        self.D.requires_grad_(True)
        if c.reuse_fake:
            fake_d = fake.detach()
        else:
            with torch.no_grad(), self.precision.autocast():
                fake_d = self.arch.generate(self.G, b)[1]
        with self.precision_d.autocast():
            pf, pr = self._discriminate(b, fake_d, real)
            losses["d_fake"] = gan_loss(pf, False, c.gan_mode)
            losses["d_real"] = gan_loss(pr, True, c.gan_mode)
            d_total = losses["d_fake"] + losses["d_real"]
        if c.gan_mode == "wgan-gp":
            losses["d_gp"] = gradient_penalty(self.D, self.arch.d_input(b, real),
                                              self.arch.d_input(b, fake_d)) * c.lambda_gp
            d_total = d_total + losses["d_gp"]
        self.opt_d.zero_grad(set_to_none=True)
        if not torch.isfinite(d_total):
            return self._bad_step("discriminator", d_total)
        self.precision_d.backward(d_total.float())
        self.precision_d.step(self.opt_d)
        self.bad_steps = 0
        out = {k: float(v.detach()) for k, v in losses.items()}
        out.update(extra)
        return out

    def _bad_step(self, part: str, value: torch.Tensor) -> None:
        self.bad_steps, self.skipped_steps = self.bad_steps + 1, self.skipped_steps + 1
        log.warning("step %d: %s loss is %s; step skipped (%d in a row)", self.step, part, float(value.detach()),
                    self.bad_steps)
        if self.bad_steps >= self.cfg.max_bad_steps:
            raise TrainingError(f"{self.bad_steps} steps in a row had a non-finite {part} loss (last at step "
                                f"{self.step}); stopping. Lower the learning rates (--lr-g/--lr-d) or check the data. "
                                f"The last good state is in {self.run / 'checkpoints'}.")
        return None

    # ---- loop --------------------------------------------------------------------------
    def fit(self) -> dict[str, float]:
        c = self.cfg
        if not self.learned:
            return self._index()
        rows = [r for r in self.dir.read_csv("losses.csv") if int(r["step"]) <= self.step]
        gallery_batch = None
        last: dict[str, float] = {}
        timed = c.time_limit_min > 0
        bar = training_bar(c.steps, self.step, c.time_limit_min, "train-gan", not self.progress)
        self.G.train()
        self.D.train()
        t0 = time.perf_counter()
        start = self.step
        try:
            for batch in self._loader(self.step):
                if gallery_batch is None:
                    gallery_batch = {k: v[:4] for k, v in batch.items() if torch.is_tensor(v)}
                losses = self.train_step(batch)
                self.step += 1
                if losses is not None:
                    last = losses
                    rows.append({"step": self.step, **{k: f"{v:.6g}" for k, v in losses.items()}})
                    self.dir.scalars("gan", losses, self.step)
                if self.step % c.log_every == 0 or self.step == c.steps:
                    bar.set_postfix({"step": self.step, **{k: f"{v:.3g}" for k, v in last.items() if k in (
                        "g_gan", "g_feat", "g_vgg", "g_pose", "g_l1", "d_fake", "d_real")}})
                    self.dir.write_csv("losses.csv", rows)
                if self.step % c.gallery_every == 0 or self.step == c.steps:
                    self.gallery(gallery_batch)
                elapsed = time.perf_counter() - t0
                out_of_time = timed and elapsed > c.time_limit_min * 60
                if self.step % c.checkpoint_every == 0 or self.step == c.steps or out_of_time:
                    self.dir.write_csv("losses.csv", rows)
                    self.save()
                bar.update(min(elapsed, c.time_limit_min * 60) - bar.n if timed else 1)
                if out_of_time:
                    if self.step % c.gallery_every:
                        self.gallery(gallery_batch)
                    log.info("time limit of %g min reached at step %d; stopping (resume with --resume)",
                             c.time_limit_min, self.step)
                    break
        finally:
            bar.close()
        self.dir.write_csv("losses.csv", rows)
        last = {**last, "seconds_per_step": (time.perf_counter() - t0) / max(self.step - start, 1)}
        if self.progress:   # with the samples by kind of a dataset that counts them (refine; in-process only)
            kinds = {k: v for k, v in getattr(self.dataset, "sample_counts", {}).items() if v and not c.workers}
            print(f"train-gan ({self.arch.describe(c)}): {self.step} steps, {last['seconds_per_step']:.2f} s/step, "
                  f"{self.skipped_steps} skipped{'; samples: ' if kinds else ''}"
                  f"{', '.join(f'{k} {v}' for k, v in kinds.items())}; gallery: {self.run / 'web' / 'index.html'}")
        return last

    def _index(self) -> dict[str, float]:
        """An architecture that is not trained (``nearest``) builds its generator from the
        training frames instead."""
        t0 = time.perf_counter()
        if self.G is None:
            self.G = self.arch.index(self.dataset, self.device, self.progress)
            self.save()
            loader = torch.utils.data.DataLoader(self.dataset, batch_size=min(4, len(self.dataset)))
            self.gallery({k: v for k, v in next(iter(loader)).items() if torch.is_tensor(v)})
        dt = time.perf_counter() - t0
        if self.progress:
            print(f"train-gan ({self.cfg.arch}): {len(self.G.frames)} frames indexed in {dt:.1f} s; "
                  f"gallery: {self.run / 'web' / 'index.html'}")
        return {"frames": float(len(self.G.frames)), "seconds": dt}

    @torch.no_grad()
    def gallery(self, batch: "dict[str, torch.Tensor] | None") -> None:
        """Write ``web/images/step_NNNNNN.png`` (rows of the architecture's columns: its
        conditioning | generated | real) and refresh ``web/index.html`` (newest first)."""
        if batch is None:
            return
        b = self.arch.prepare(self._to(batch), 10**9)   # a fixed draw (e.g. region) for every gallery
        G = self.average.module if self.average is not None else self.G   # the weights that render
        was = G.training
        G.eval()
        with self.precision.autocast():
            _, fake = self.arch.generate(G, b)
        G.train(was)
        grid = np.concatenate([np.concatenate(row, 1) for row in zip(*self.arch.gallery_columns(b, fake))], 0)
        self.dir.write_gallery(grid, self.step, f"{self.run} ({self.arch.describe(self.cfg)})", self.arch.columns)
