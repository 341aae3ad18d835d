"""Training the SPADE generator against the multi-scale PatchGAN (``posesynth train-gan``).

Run directory::

    RUN/config.yaml                  the resolved GANConfig
    RUN/checkpoints/latest.{safetensors,json}   G, D, both optimizers, step (atomic)
    RUN/losses.csv                   one row per step
    RUN/web/index.html, web/images/  gallery: maps | generated | real, every gallery_every steps
    RUN/tb/                          TensorBoard scalars and images (when tensorboard is installed)

Every random draw in step ``s`` comes from a generator seeded by ``(seed, s)``, and batches
from :class:`~posesynth.datasets.torch_dataset.EpochBatchSampler`, so ``--resume``
continues exactly: on CPU the losses match an uninterrupted run.
"""
from __future__ import annotations

import csv
import dataclasses
import html
import io
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ..checkpoint import load_checkpoint, load_module, module_tensors, optimizer_from_flat, optimizer_to_flat, save_checkpoint
from ..config import save_config, to_dict
from ..datasets.formats import KeypointSource, open_dataset
from ..datasets.layouts import KeypointLayout
from ..datasets.posemaps import PoseMapSpec
from ..datasets.torch_dataset import EpochBatchSampler, PoseMapDataset, tensor_to_image
from ..datasets.transforms import RandomAffine
from ..datasets.visualize import maps_to_rgb
from ..errors import ConfigError, PosesynthError
from ..io import atomic_write_text
from .discriminator import MultiscaleDiscriminator
from .generator import GeneratorConfig, SPADEGenerator
from .losses import GAN_MODES, PoseConsistencyLoss, VGGLoss, feature_matching_loss, gan_loss, gradient_penalty, load_vgg19

__all__ = ["GANConfig", "GANTrainer", "TrainingError", "load_generator"]

log = logging.getLogger(__name__)


class TrainingError(PosesynthError):
    """Training cannot go on (e.g. too many non-finite steps)."""


@dataclass
class GANConfig:
    """Settings of a GAN run (all overridable on the command line)."""

    data: str = field(default="", metadata={"help": "training dataset (folder or annotation file)"})
    layout: str = field(default="", metadata={"help": "convert the data to this layout (default: its own)"})
    size: tuple[int, int] = field(default=(128, 128), metadata={"help": "image size H,W (multiple of 32)"})
    ngf: int = 32
    ndf: int = 64
    num_d: int = 2
    n_layers_d: int = 4
    norm: str = field(default="instance", metadata={"help": "param-free norm in SPADE: instance|batch"})
    z_dim: int = field(default=0, metadata={"help": "noise channels fed with the downsampled maps"})
    gan_mode: str = field(default="hinge", metadata={"help": "hinge|ls|wgan-gp"})
    lambda_feat: float = 10.0
    lambda_vgg: float = 10.0
    lambda_gp: float = 10.0
    vgg: str = field(default="auto", metadata={"help": "auto (use if weights are found)|on (required)|off"})
    vgg_weights: str = field(default="", metadata={"help": "VGG19 weights file (default: torch hub cache)"})
    pose_judge: str = field(default="", metadata={
        "help": "pose-network run whose frozen network judges pose consistency (train-posenet --out)"})
    lambda_pose_hm: float = 100.0
    lambda_pose_paf: float = 100.0
    lambda_pose_mask: float = 1.0
    sigma: float = field(default=7.0, metadata={"help": "heatmap sigma in input pixels"})
    paf_width: float = field(default=8.0, metadata={"help": "PAF half-width in input pixels"})
    steps: int = 1000
    batch_size: int = 2
    lr_g: float = 1e-4
    lr_d: float = 4e-4
    beta1: float = 0.0
    beta2: float = 0.9
    decay_from: int = field(default=-1, metadata={"help": "step where linear LR decay to 0 starts (-1: none)"})
    device: str = "cpu"
    seed: int = 0
    workers: int = 0
    augment: bool = field(default=True, metadata={"help": "random scale/rotation/shift/flip of the training data"})
    log_every: int = 10
    gallery_every: int = 100
    checkpoint_every: int = 200
    time_limit_min: float = field(default=0.0, metadata={
        "help": "stop cleanly (with a checkpoint) after this many minutes of training (0: no limit)"})
    max_bad_steps: int = field(default=20, metadata={"help": "stop after this many non-finite steps in a row"})
    channels_last: bool = field(default=True, metadata={"help": "channels-last memory format (faster convs)"})
    reuse_fake: bool = field(default=True, metadata={
        "help": "D step reuses the G step's (detached) fake instead of a fresh G forward as NVlabs does"})

    def validate(self) -> None:
        if self.gan_mode not in GAN_MODES:
            raise ConfigError(f"gan_mode must be one of {GAN_MODES}, not {self.gan_mode!r}")
        if self.vgg not in ("auto", "on", "off"):
            raise ConfigError(f"vgg must be auto, on or off, not {self.vgg!r}")
        if any(s % 32 or s < 64 for s in self.size):
            raise ConfigError(f"size {self.size} must be multiples of 32 and at least 64 (the generator starts "
                              "at size/32, and instance norm needs more than one pixel)")
        if self.batch_size < 1 or self.steps < 1:
            raise ConfigError("batch_size and steps must be at least 1")


def _seed_step(seed: int, step: int) -> None:
    torch.manual_seed((seed * 1_000_003 + step) % (2**63))


class GANTrainer:
    """Builds G, D and the losses for ``cfg`` in ``run_dir`` and trains them.

    Args:
        cfg: the run's settings.
        run_dir: where config, checkpoints, logs and gallery go.
        source: the training data (default: ``open_dataset(cfg.data)``).
        pose_judge: optional frozen pose network for the pose-consistency loss: maps an image
            ``(B, 3, H, W)`` in [-1, 1] to ``(heatmaps, pafs, mask)``.
        resume: continue from ``run_dir/checkpoints/latest``.
    """

    def __init__(self, cfg: GANConfig, run_dir: "str | Path", source: "KeypointSource | None" = None,
                 pose_judge: "nn.Module | None" = None, resume: bool = False, progress: bool = True) -> None:
        cfg.validate()
        self.cfg, self.run = cfg, Path(run_dir)
        self.progress = progress
        self.device = torch.device(cfg.device)
        self.source = source if source is not None else open_dataset(cfg.data, layout=cfg.layout or None,
                                                                      on_error="skip")
        self.layout: KeypointLayout = self.source.layout
        self.spec = PoseMapSpec(cfg.sigma, cfg.paf_width)
        tf = RandomAffine(None, scale=(0.9, 1.1), aspect=(0.95, 1.05), rotate=5, translate=0.05, flip_prob=0.5,
                          layout=self.layout) if cfg.augment else None
        self.dataset = PoseMapDataset(self.source, tuple(cfg.size), tf, stride=4, spec=self.spec, seed=cfg.seed)
        torch.manual_seed(cfg.seed)
        self.gcfg = GeneratorConfig(self.layout.num_channels, tuple(cfg.size), cfg.ngf, "normal", cfg.norm, True,
                                    cfg.z_dim)
        self.G = SPADEGenerator(self.gcfg).to(self.device)
        self.D = MultiscaleDiscriminator(self.layout.num_channels + 3, cfg.ndf, cfg.n_layers_d, cfg.num_d).to(self.device)
        if cfg.channels_last:
            self.G.to(memory_format=torch.channels_last)
            self.D.to(memory_format=torch.channels_last)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=cfg.lr_g, betas=(cfg.beta1, cfg.beta2))
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=cfg.lr_d, betas=(cfg.beta1, cfg.beta2))
        self.vgg = self._build_vgg()
        self.pose_loss = None
        if pose_judge is None and cfg.pose_judge:
            from ..posenet.trainer import load_posenet

            pose_judge, judge_layout, _ = load_posenet(cfg.pose_judge, self.device)
            if judge_layout.keypoints != self.layout.keypoints or judge_layout.num_masks != self.layout.num_masks:
                raise ConfigError(f"pose judge {cfg.pose_judge} predicts layout '{judge_layout.name}', the GAN data "
                                  f"is '{self.layout.name}'")
        if pose_judge is not None:
            self.pose_loss = PoseConsistencyLoss(pose_judge.to(self.device), cfg.lambda_pose_hm, cfg.lambda_pose_paf,
                                                 cfg.lambda_pose_mask)
        self.step = 0
        self.bad_steps = 0
        self.skipped_steps = 0
        if resume:
            self._load(self.run / "checkpoints" / "latest")
        elif (self.run / "checkpoints" / "latest.json").exists():
            raise ConfigError(f"{self.run} already holds a run: pass --resume to continue it, or choose another --out")
        self.run.mkdir(parents=True, exist_ok=True)
        save_config(cfg, self.run / "config.yaml")
        self._tb = self._tensorboard()

    # ---- set-up ------------------------------------------------------------------------
    def _build_vgg(self) -> "VGGLoss | None":
        cfg = self.cfg
        if cfg.vgg == "off" or cfg.lambda_vgg == 0:
            return None
        feats = load_vgg19(cfg.vgg_weights or None)
        if feats is None:
            if cfg.vgg == "on":
                raise ConfigError("the perceptual loss was asked for (--vgg on) but no VGG19 weights were found "
                                  "in the torch hub cache; give a file with --vgg-weights")
            log.warning("perceptual loss off: no VGG19 weights in the torch hub cache (~/.cache/torch/hub/"
                        "checkpoints/vgg19-dcbb9e9d.pth) and none given with --vgg-weights; training without it")
            return None
        return VGGLoss(feats).to(self.device)

    def _tensorboard(self):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception:  # tensorboard is optional
            return None
        return SummaryWriter(str(self.run / "tb"))

    def _loader(self, start: int) -> torch.utils.data.DataLoader:
        sampler = EpochBatchSampler(len(self.dataset), self.cfg.batch_size, self.cfg.seed, start, self.cfg.steps)
        return torch.utils.data.DataLoader(self.dataset, batch_sampler=sampler, num_workers=self.cfg.workers,
                                           persistent_workers=False, pin_memory=self.device.type == "cuda")

    # ---- checkpoints -------------------------------------------------------------------
    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors = {**module_tensors(self.G, "G"), **module_tensors(self.D, "D")}
        tg, sg = optimizer_to_flat(self.opt_g, "opt_g")
        td, sd = optimizer_to_flat(self.opt_d, "opt_d")
        tensors.update(tg)
        tensors.update(td)
        meta = {"kind": "posesynth-gan", "step": self.step, "skipped_steps": self.skipped_steps,
                "opt_g": sg, "opt_d": sd, "config": to_dict(self.cfg), "generator": dataclasses.asdict(self.gcfg),
                "layout": self.layout.to_dict()}
        return tensors, meta

    def save(self, name: str = "latest") -> None:
        tensors, meta = self.state()
        save_checkpoint(self.run / "checkpoints" / name, tensors, meta)

    def _load(self, path: Path) -> None:
        tensors, meta = load_checkpoint(path)
        if meta.get("layout", {}).get("keypoints") != list(self.layout.keypoints):
            raise ConfigError(f"{path}: trained on layout '{meta.get('layout', {}).get('name')}', "
                              f"the data is '{self.layout.name}'")
        load_module(self.G, tensors, "G", str(path))
        load_module(self.D, tensors, "D", str(path))
        optimizer_from_flat(self.opt_g, tensors, meta["opt_g"], "opt_g")
        optimizer_from_flat(self.opt_d, tensors, meta["opt_d"], "opt_d")
        self.step = int(meta["step"])
        self.skipped_steps = int(meta.get("skipped_steps", 0))

    # ---- one step ----------------------------------------------------------------------
    def _lr_factor(self, step: int) -> float:
        c = self.cfg
        if c.decay_from < 0 or step < c.decay_from:
            return 1.0
        return max(0.0, 1.0 - (step - c.decay_from) / max(c.steps - c.decay_from, 1))

    def _to(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        out = {}
        for k, v in batch.items():
            if torch.is_tensor(v):
                v = v.to(self.device, non_blocking=True)
                if v.dim() == 4 and self.cfg.channels_last:
                    v = v.contiguous(memory_format=torch.channels_last)
                out[k] = v
        return out

    def _discriminate(self, maps: torch.Tensor, fake: torch.Tensor, real: torch.Tensor):
        both = torch.cat([torch.cat([maps, fake], 1), torch.cat([maps, real], 1)], 0)
        preds = self.D(both)
        n = fake.shape[0]
        return [[f[:n] for f in s] for s in preds], [[f[n:] for f in s] for s in preds]

    def train_step(self, batch: dict[str, Any]) -> "dict[str, float] | None":
        """One generator and one discriminator update; returns the losses, or ``None`` when
        the step was skipped for a non-finite loss."""
        c = self.cfg
        _seed_step(c.seed, self.step)
        b = self._to(batch)
        maps, real = b["maps"], b["image"]
        for opt in (self.opt_g, self.opt_d):
            for grp in opt.param_groups:
                grp["lr"] = (c.lr_g if opt is self.opt_g else c.lr_d) * self._lr_factor(self.step)
        # --- generator
        self.D.requires_grad_(False)
        fake = self.G(maps)
        pf, pr = self._discriminate(maps, fake, real)
        losses: dict[str, torch.Tensor] = {"g_gan": gan_loss(pf, True, c.gan_mode, for_discriminator=False),
                                           "g_feat": feature_matching_loss(pf, pr) * c.lambda_feat}
        if self.vgg is not None:
            losses["g_vgg"] = self.vgg(fake, real) * c.lambda_vgg
        extra: dict[str, float] = {}
        if self.pose_loss is not None:
            losses["g_pose"], extra = self.pose_loss(fake, b["heatmaps"], b["pafs"], b["masks"])
        g_total = sum(losses.values())
        self.opt_g.zero_grad(set_to_none=True)
        if not torch.isfinite(g_total):
            return self._bad_step("generator", g_total)
        g_total.backward()
        self.opt_g.step()
        # --- discriminator
        self.D.requires_grad_(True)
        if c.reuse_fake:
            fake_d = fake.detach()
        else:
            with torch.no_grad():
                fake_d = self.G(maps)
        pf, pr = self._discriminate(maps, fake_d, real)
        losses["d_fake"] = gan_loss(pf, False, c.gan_mode)
        losses["d_real"] = gan_loss(pr, True, c.gan_mode)
        d_total = losses["d_fake"] + losses["d_real"]
        if c.gan_mode == "wgan-gp":
            losses["d_gp"] = gradient_penalty(self.D, torch.cat([maps, real], 1), torch.cat([maps, fake_d], 1)) * c.lambda_gp
            d_total = d_total + losses["d_gp"]
        self.opt_d.zero_grad(set_to_none=True)
        if not torch.isfinite(d_total):
            return self._bad_step("discriminator", d_total)
        d_total.backward()
        self.opt_d.step()
        self.bad_steps = 0
        out = {k: float(v.detach()) for k, v in losses.items()}
        out.update(extra)
        return out

    def _bad_step(self, part: str, value: torch.Tensor) -> None:
        self.bad_steps += 1
        self.skipped_steps += 1
        log.warning("step %d: %s loss is %s; step skipped (%d in a row)", self.step, part, float(value.detach()), self.bad_steps)
        if self.bad_steps >= self.cfg.max_bad_steps:
            raise TrainingError(f"{self.bad_steps} steps in a row had a non-finite {part} loss (last at step "
                                f"{self.step}); stopping. Lower the learning rates (--lr-g/--lr-d) or check the data. "
                                f"The last good state is in {self.run / 'checkpoints'}.")
        return None

    # ---- loop --------------------------------------------------------------------------
    def fit(self) -> dict[str, float]:
        c = self.cfg
        csv_path = self.run / "losses.csv"
        rows = self._read_csv(csv_path)
        gallery_batch = None
        last: dict[str, float] = {}
        bar = tqdm(total=c.steps, initial=self.step, desc="train-gan", unit="it", disable=not self.progress,
                   dynamic_ncols=True)
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
                    if self._tb is not None:
                        for k, v in losses.items():
                            self._tb.add_scalar(f"gan/{k}", v, self.step)
                if self.step % c.log_every == 0 or self.step == c.steps:
                    bar.set_postfix({k: f"{v:.3g}" for k, v in last.items() if k in ("g_gan", "g_feat", "g_vgg",
                                                                                   "g_pose", "d_fake", "d_real")})
                    self._write_csv(csv_path, rows)
                if self.step % c.gallery_every == 0 or self.step == c.steps:
                    self.gallery(gallery_batch)
                out_of_time = c.time_limit_min > 0 and time.perf_counter() - t0 > c.time_limit_min * 60
                if self.step % c.checkpoint_every == 0 or self.step == c.steps or out_of_time:
                    self._write_csv(csv_path, rows)
                    self.save()
                bar.update()
                if out_of_time:
                    if self.step % c.gallery_every:
                        self.gallery(gallery_batch)
                    log.info("time limit of %g min reached at step %d; stopping (resume with --resume)",
                             c.time_limit_min, self.step)
                    break
        finally:
            bar.close()
        self._write_csv(csv_path, rows)
        dt = time.perf_counter() - t0
        last = dict(last)
        last["seconds_per_step"] = dt / max(self.step - start, 1)
        if self.progress:
            print(f"train-gan: {self.step} steps, {last['seconds_per_step']:.2f} s/step, "
                  f"{self.skipped_steps} skipped; gallery: {self.run / 'web' / 'index.html'}")
        return last

    def _read_csv(self, path: Path) -> list[dict[str, Any]]:
        if not path.exists():
            return []
        with open(path, newline="") as f:
            return [r for r in csv.DictReader(f) if int(r["step"]) <= self.step]

    def _write_csv(self, path: Path, rows: list[dict[str, Any]]) -> None:
        keys: list[str] = []
        for r in rows:
            keys += [k for k in r if k not in keys]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=keys or ["step"])
        w.writeheader()
        w.writerows(rows)
        atomic_write_text(path, buf.getvalue())

    @torch.no_grad()
    def gallery(self, batch: "dict[str, torch.Tensor] | None") -> None:
        """Write ``web/images/step_NNNNNN.png`` (rows of maps | generated | real) and refresh
        ``web/index.html`` (newest first)."""
        if batch is None:
            return
        import cv2

        b = self._to(batch)
        was = self.G.training
        self.G.eval()
        fake = self.G(b["maps"])
        self.G.train(was)
        rows = []
        for i in range(fake.shape[0]):
            m = maps_to_rgb(b["maps"][i].float().cpu().numpy(), self.layout)
            rows.append(np.concatenate([m, tensor_to_image(fake[i]), tensor_to_image(b["image"][i])], 1))
        grid = np.concatenate(rows, 0)
        web = self.run / "web"
        (web / "images").mkdir(parents=True, exist_ok=True)
        name = f"step_{self.step:06d}.png"
        cv2.imwrite(str(web / "images" / name), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
        if self._tb is not None:
            self._tb.add_image("gan/maps_generated_real", grid, self.step, dataformats="HWC")
        imgs = sorted((web / "images").glob("step_*.png"), reverse=True)
        body = "\n".join(f"<h3>step {int(p.stem[5:])}</h3><img src='images/{html.escape(p.name)}'>" for p in imgs)
        atomic_write_text(web / "index.html",
                          f"<!doctype html><html><head><meta charset='utf-8'><meta http-equiv='refresh' content='60'>"
                          f"<title>{html.escape(self.run.name)}: GAN gallery</title></head><body>"
                          f"<h1>{html.escape(str(self.run))}</h1><p>columns: pose maps | generated | real</p>"
                          f"{body}</body></html>")


def load_generator(run_dir: "str | Path", device: "str | torch.device" = "cpu", checkpoint: str = "latest",
                   channels_last: bool = True) -> tuple[SPADEGenerator, KeypointLayout, dict[str, Any]]:
    """The trained generator of a GAN run (eval mode), its layout and the checkpoint's metadata.

    ``channels_last`` (as in training) gives bit-identical outputs to the trained model."""
    run = Path(run_dir)
    path = run / "checkpoints" / checkpoint
    tensors, meta = load_checkpoint(path)
    if meta.get("kind") != "posesynth-gan":
        raise PosesynthError(f"{path}: not a posesynth GAN checkpoint")
    g = meta["generator"]
    g["size"] = tuple(g["size"])
    gen = SPADEGenerator(GeneratorConfig(**g))
    load_module(gen, tensors, "G", str(path))
    layout = KeypointLayout.from_dict(meta["layout"], source=str(path))
    gen = gen.to(device).eval()
    if channels_last:
        gen.to(memory_format=torch.channels_last)
    return gen, layout, meta
