"""Training HP-GAN on pose sequences (``posesynth train-motion``).

Each training example is a window of ``past + future`` consecutive frames of one person
(:func:`.data.make_windows`), normalised in the frame of its last past pose
(:class:`.data.Normaliser`), randomly mirrored (``flip``).  Per generator step:

- ``n_critic`` updates of the WGAN-GP critic on (past + real future) against (past +
  generated future), gradient penalty ``lambda_gp``;
- one update of the quality discriminator (the same network, binary cross-entropy; it does
  not train the generator, its probability on generated sequences is logged as ``quality``);
- one generator update: ``-critic + lambda_bone * bone + lambda_consistency * consistency``.

Run directory::

    RUN/config.yaml                         the resolved MotionConfig
    RUN/checkpoints/latest.{safetensors,json}  networks, optimizers, step, plausibility threshold
    RUN/losses.csv                          one row per step
    RUN/predictions.png                     skeleton strips of held-out windows: real, then generated
    RUN/plausibility.json                   the critic's threshold on real poses

Every random draw of step ``s`` comes from generators seeded by ``(seed, s)``, so ``--resume``
continues exactly: on CPU the losses match an uninterrupted run.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ...checkpoint import load_checkpoint, load_module, module_tensors, optimizer_from_flat, optimizer_to_flat
from ...config import check_numbers, config_from_dict, to_dict
from ...datasets.layouts import KeypointLayout
from ...datasets.sequences import PoseSequence, load_sequences, split_sequences
from ...errors import ConfigError, PosesynthError
from ...io import atomic_write_json
from ...runs import RunDir
from .data import JointMap, Normaliser, arm_joints, bones_of, make_windows
from .draw import draw_strips
from .losses import bone_loss, consistency_loss, gradient_penalty
from .metrics import bone_length_error
from .model import MotionGenerator, MotionModelConfig, SequenceCritic

__all__ = ["MotionConfig", "MotionTrainer", "MotionRun", "TrainingError", "load_motion", "score_poses", "held_sequences"]

log = logging.getLogger(__name__)


#: every numeric option's allowed values (config.check_numbers; other floats must be finite)
MOTION_NUMBERS = {"past": ">=1", "future": ">=1", "stride": ">=1", "val_fraction": "[0,1)", "hidden": ">=1",
                  "z_dim": ">=0", "layers": ">=1", "critic_hidden": ">=1", "critic_layers": ">=1", "steps": ">=1",
                  "batch_size": ">=1", "n_critic": ">=1", "lambda_gp": ">=0", "nda_fraction": "[0,1)",
                  "nda_jitter": ">=0", "pose_nda_fraction": "[0,1]", "held_fraction": ">=0", "lambda_bone": ">=0",
                  "lambda_consistency": ">=0", "lr_g": ">=0", "lr_d": ">=0", "beta1": "[0,1)", "beta2": "[0,1)",
                  "threshold_quantile": "(0,1)", "seed": ">=0", "log_every": ">=1", "picture_every": ">=1",
                  "checkpoint_every": ">=1", "time_limit_min": ">=0"}


@dataclass
class MotionConfig:
    """Settings of a motion run (all overridable on the command line)."""

    data: str = field(default="", metadata={
        "help": "pose sequences: a video dataset, COCO with video ids, make-data --sequences output, or BlazePose JSON"})
    layout: str = field(default="", metadata={"help": "convert the data to this layout (default: its own)"})
    past: int = field(default=10, metadata={"help": "frames the generator is conditioned on"})
    future: int = field(default=20, metadata={"help": "frames it predicts"})
    stride: int = field(default=1, metadata={"help": "frames between the starts of training windows"})
    val_fraction: float = field(default=0.1, metadata={"help": "share of clips held out for pictures and the threshold"})
    flip: bool = field(default=True, metadata={"help": "mirror half the training windows"})
    hidden: int = field(default=128, metadata={"help": "GRU width of the generator"})
    z_dim: int = field(default=16, metadata={"help": "noise dimensions of the generator"})
    layers: int = field(default=2, metadata={"help": "GRU layers of the generator"})
    critic_hidden: int = field(default=256, metadata={"help": "width of the critic and the quality discriminator"})
    critic_layers: int = field(default=3, metadata={"help": "layers of the critic and the quality discriminator"})
    steps: int = field(default=2000, metadata={"help": "generator updates in all, counting those of a resumed run"})
    batch_size: int = field(default=64, metadata={"help": "windows per step"})
    n_critic: int = field(default=5, metadata={"help": "critic updates per generator update"})
    lambda_gp: float = field(default=10.0, metadata={"help": "WGAN-GP gradient-penalty weight"})
    nda_fraction: float = field(default=0.5, metadata={
        "help": "share of the critic's fake batch that is negative data augmentation of real windows "
                "(future spliced from another window, or jittered frame by frame); 0: generated only"})
    nda_jitter: float = field(default=0.05, metadata={"help": "per-frame joint jitter of the NDA, in torso lengths"})
    pose_nda_fraction: float = field(default=0.5, metadata={
        "help": "share of the held (single-pose) fakes that are anatomical negatives of real poses: an arm bone "
                "scaled by 0.6-0.85 or 1.15-1.5, or an elbow bent backwards by 30-120 degrees; 0: off"})
    held_fraction: float = field(default=0.5, metadata={
        "help": "single poses held still, as many as this share of the batch, join the critic's real (data) and "
                "fake (generated frames) batches: the view in which single poses are judged; 0: off"})
    lambda_bone: float = field(default=100.0, metadata={"help": "weight of the bone-length loss (0: off)"})
    lambda_consistency: float = field(default=1.0, metadata={"help": "weight of the consistency loss (0: off)"})
    lr_g: float = field(default=2e-4, metadata={"help": "generator learning rate (Adam)"})
    lr_d: float = field(default=2e-4, metadata={"help": "critic learning rate (Adam)"})
    beta1: float = field(default=0.5, metadata={"help": "Adam beta1"})
    beta2: float = field(default=0.9, metadata={"help": "Adam beta2"})
    threshold_quantile: float = field(default=0.05, metadata={
        "help": "plausibility threshold: this quantile of the critic's scores on real held-out poses"})
    device: str = field(default="cpu", metadata={"help": "cpu|cuda|cuda:N"})
    seed: int = field(default=0, metadata={"help": "seed of the weights, the windows and the noise"})
    log_every: int = field(default=10, metadata={"help": "write a row of losses.csv every N steps"})
    picture_every: int = field(default=200, metadata={"help": "draw predictions.png every N steps"})
    checkpoint_every: int = field(default=200, metadata={"help": "save a checkpoint every N steps (and at the end)"})
    time_limit_min: float = field(default=0.0, metadata={
        "help": "stop cleanly (with a checkpoint) after this many minutes of training (0: no limit)"})

    def validate(self) -> None:
        if self.past < 1 or self.future < 1:
            raise ConfigError(f"past and future must be at least 1 frame (got {self.past} and {self.future})")
        if self.steps < 1 or self.batch_size < 1 or self.n_critic < 1 or self.stride < 1:
            raise ConfigError("steps, batch_size, n_critic and stride must be at least 1")
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"val_fraction must be in [0, 1), not {self.val_fraction}")
        if not 0 <= self.nda_fraction < 1:
            raise ConfigError(f"nda_fraction must be in [0, 1), not {self.nda_fraction}")
        if not 0 <= self.pose_nda_fraction <= 1:
            raise ConfigError(f"pose_nda_fraction must be in [0, 1], not {self.pose_nda_fraction}")
        if self.held_fraction < 0:
            raise ConfigError(f"held_fraction must be at least 0, not {self.held_fraction}")
        if not 0 < self.threshold_quantile < 1:
            raise ConfigError(f"threshold_quantile must be in (0, 1), not {self.threshold_quantile}")
        check_numbers(self, MOTION_NUMBERS)

    def model_config(self, layout: KeypointLayout) -> MotionModelConfig:
        return MotionModelConfig(layout.num_keypoints, self.past + self.future, self.hidden, self.z_dim, self.layers,
                                 self.critic_hidden, self.critic_layers)


def held_sequences(poses: torch.Tensor, length: int) -> torch.Tensor:
    """Single normalised poses ``(N, J, 2)`` as sequences for the critic: each pose held
    still for ``length`` frames, ``(N, length, J, 2)``."""
    return poses.unsqueeze(1).expand(-1, length, -1, -1)


@torch.no_grad()
def score_poses(critic: torch.nn.Module, poses: np.ndarray, length: int, device: "str | torch.device" = "cpu",
                batch: int = 1024) -> np.ndarray:
    """Critic scores ``(N,)`` of single normalised poses ``(N, J, 2)`` held for ``length`` frames."""
    out = []
    for i in range(0, len(poses), batch):
        x = torch.as_tensor(np.asarray(poses[i:i + batch], np.float32), device=device)
        out.append(critic(held_sequences(x, length)).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, np.float32)


class MotionTrainer:
    """Builds HP-GAN for ``cfg`` in ``run_dir`` and trains it.

    Args:
        cfg: the run's settings.
        run_dir: where config, checkpoints, losses and pictures go.
        sequences: the training sequences with their ``layout`` (default:
            ``load_sequences(cfg.data, cfg.layout)``).
        resume: continue from ``run_dir/checkpoints/latest``.
    """

    def __init__(self, cfg: MotionConfig, run_dir: "str | Path",
                 sequences: "tuple[Sequence[PoseSequence], KeypointLayout] | None" = None, resume: bool = False,
                 progress: bool = True) -> None:
        cfg.validate()
        self.cfg, self.run, self.progress = cfg, Path(run_dir), progress
        self.device = torch.device(cfg.device)
        seqs, layout = sequences if sequences is not None else load_sequences(cfg.data, cfg.layout or None)
        self.layout = layout
        self.norm = Normaliser.for_layout(layout)
        jmap = JointMap(layout, layout)
        length = cfg.past + cfg.future
        train_s, val_s = split_sequences(seqs, cfg.val_fraction, cfg.seed) if len({s.video for s in seqs}) > 1 \
            else (list(seqs), [])
        train_w, val_w = make_windows(train_s, jmap, length, cfg.stride), make_windows(val_s, jmap, length, cfg.stride)
        if len(train_w) == 0:
            raise ConfigError(f"{cfg.data or 'the data'}: no window of {length} consecutive frames (past {cfg.past} + "
                              f"future {cfg.future}) with all {layout.num_keypoints} keypoints labelled; use shorter "
                              "--past/--future or longer sequences")
        if len(val_w) == 0:
            log.info("no held-out windows (%d clip(s)); pictures and the threshold use training windows",
                     len({s.video for s in seqs}))
            val_w = train_w
        self.num_windows = (len(train_w), len(val_w))
        self.train_x = self._normalised(train_w.xy)
        self.val_x = self._normalised(val_w.xy)
        self.flip_index = torch.as_tensor(layout.flip_index, device=self.device)
        self.bones = torch.as_tensor(bones_of(layout), device=self.device)
        torch.manual_seed(cfg.seed)
        self.mcfg = cfg.model_config(layout)
        self.G = MotionGenerator(self.mcfg).to(self.device)
        self.C = SequenceCritic(self.mcfg).to(self.device)
        self.Q = SequenceCritic(self.mcfg).to(self.device)
        vel = self.train_x[:, 1:] - self.train_x[:, :-1]
        for critic in (self.C, self.Q):
            critic.vel_scale.fill_(1.0 / max(float(vel.pow(2).sum(-1).mean().sqrt()), 1e-6))
        betas = (cfg.beta1, cfg.beta2)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=cfg.lr_g, betas=betas)
        self.opt_c = torch.optim.Adam(self.C.parameters(), lr=cfg.lr_d, betas=betas)
        self.opt_q = torch.optim.Adam(self.Q.parameters(), lr=cfg.lr_d, betas=betas)
        self.step = 0
        self.threshold: "dict[str, Any] | None" = None
        # the run scaffold: refuses to overwrite a run (or resume nothing), removes the temporary
        # files a crash left anywhere in the run folder, records the config
        self.dir = RunDir(self.run)
        self.dir.prepare(cfg, resume)
        if resume:
            self._load("latest")

    def _normalised(self, xy: np.ndarray) -> torch.Tensor:
        n, _ = self.norm.normalise(xy, xy[:, self.cfg.past - 1])[:2]
        return torch.as_tensor(n, device=self.device)

    # ---- checkpoints -------------------------------------------------------------------
    def calibrate(self) -> dict[str, Any]:
        """The plausibility threshold: the ``threshold_quantile`` of the critic's scores on the
        held-out real poses (every frame of the held-out windows, each held still)."""
        poses = self.val_x[:, :].reshape(-1, *self.val_x.shape[2:])
        # each frame in its own frame of reference, as single poses are scored
        xy = poses.cpu().numpy()
        root, scale = self.norm.frame(xy)
        xy = ((xy - root[:, None]) / scale[:, None, None]).astype(np.float32)
        if len(xy) > 4000:
            xy = xy[np.random.default_rng(0).choice(len(xy), 4000, replace=False)]
        was = self.C.training
        self.C.eval()
        s = score_poses(self.C, xy, self.cfg.past + self.cfg.future, self.device)
        self.C.train(was)
        self.threshold = {"threshold": float(np.quantile(s, self.cfg.threshold_quantile)),
                          "quantile": self.cfg.threshold_quantile, "poses": int(len(s)),
                          "score_mean": float(s.mean()), "score_std": float(s.std()), "step": self.step}
        return self.threshold

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors = {**module_tensors(self.G, "G"), **module_tensors(self.C, "C"), **module_tensors(self.Q, "Q")}
        meta: dict[str, Any] = {"kind": "posesynth-motion", "step": self.step, "config": to_dict(self.cfg),
                                "model": dataclasses.asdict(self.mcfg), "layout": self.layout.to_dict(),
                                "windows": list(self.num_windows), "plausibility": self.calibrate()}
        for name, opt in (("opt_g", self.opt_g), ("opt_c", self.opt_c), ("opt_q", self.opt_q)):
            t, s = optimizer_to_flat(opt, name)
            tensors.update(t)
            meta[name] = s
        return tensors, meta

    def save(self, name: str = "latest") -> None:
        tensors, meta = self.state()
        self.dir.save(name, tensors, meta)
        atomic_write_json(self.run / "plausibility.json", meta["plausibility"], indent=1)

    def _load(self, name: str) -> None:
        path = self.dir.ckpt / name
        tensors, meta = self.dir.load(name)
        if meta.get("kind") != "posesynth-motion":
            raise PosesynthError(f"{path}: not a posesynth motion checkpoint")
        if meta.get("layout", {}).get("keypoints") != list(self.layout.keypoints):
            raise ConfigError(f"{path}: trained on layout '{meta.get('layout', {}).get('name')}', "
                              f"the data is '{self.layout.name}'")
        if list(meta.get("windows", [])) != list(self.num_windows):
            log.warning("%s: the data now gives %s training/held-out windows, the run was started with %s; "
                        "the resumed run will not match an uninterrupted one", path, self.num_windows, meta.get("windows"))
        for prefix, mod in (("G", self.G), ("C", self.C), ("Q", self.Q)):
            load_module(mod, tensors, prefix, str(path))
        for name, opt in (("opt_g", self.opt_g), ("opt_c", self.opt_c), ("opt_q", self.opt_q)):
            optimizer_from_flat(opt, tensors, meta[name], name)
        self.step = int(meta["step"])
        self.threshold = meta.get("plausibility")

    # ---- one step ----------------------------------------------------------------------
    def _batch(self, rng: np.random.Generator, n: "int | None" = None) -> torch.Tensor:
        c = self.cfg
        n = n or c.batch_size
        idx = torch.as_tensor(rng.integers(0, len(self.train_x), n), device=self.device)
        x = self.train_x[idx]
        if c.flip:
            f = torch.as_tensor(rng.random(n) < 0.5, device=self.device)
            mirrored = x[:, :, self.flip_index] * torch.tensor([-1.0, 1.0], device=self.device)
            x = torch.where(f[:, None, None, None], mirrored, x)
        return x

    def _negatives(self, rng: np.random.Generator, n: int) -> torch.Tensor:
        """Negative data augmentation (Sinha et al. 2021): ``n`` real windows whose future is
        replaced by another window's future (a jump at the junction; half of them) or has
        independent Gaussian jitter of ``nda_jitter`` torso lengths on every joint of every
        frame (the other half).  The critic counts them as fakes."""
        c = self.cfg
        x = self._batch(rng, n).clone()
        other = self._batch(rng, n)
        splice = torch.as_tensor(rng.random(n) < 0.5, device=self.device)[:, None, None, None]
        noise = torch.as_tensor(rng.standard_normal((n, c.future) + tuple(x.shape[2:])).astype(np.float32),
                                device=self.device) * c.nda_jitter
        x[:, c.past:] = torch.where(splice, other[:, c.past:], x[:, c.past:] + noise)
        return x

    def _own_frame(self, poses: torch.Tensor) -> torch.Tensor:
        """Poses ``(N, J, 2)``, each normalised in its own frame (as a single pose is scored)."""
        n = self.norm
        root = poses[:, list(n.root)].mean(1) if n.root else poses.mean(1)
        if n.top:
            scale = (poses[:, list(n.top)].mean(1) - root).norm(dim=-1)
        else:
            scale = (poses - root[:, None]).pow(2).sum(-1).mean(-1).sqrt()
        return (poses - root[:, None]) / scale.clamp_min(1e-6)[:, None, None]

    def _held(self, seqs: torch.Tensor, n: int, first: int, rng: np.random.Generator) -> torch.Tensor:
        """``n`` single poses, held still: frame ``t >= first`` of the first ``n`` sequences."""
        t = torch.as_tensor(rng.integers(first, seqs.shape[1], n), device=self.device)
        poses = seqs[torch.arange(n, device=self.device), t]
        return held_sequences(self._own_frame(poses), seqs.shape[1])

    def _pose_negatives(self, real_held: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """Anatomical negatives of held real poses ``(N, T, J, 2)``: in each, one arm gets a
        bone scaled by U(0.6, 0.85) or U(1.15, 1.5) (half of them), or its elbow bent
        backwards, against flexion, by U(30, 120) degrees (the other half)."""
        arms = arm_joints(self.layout)
        x = real_held[:, 0].clone()                                       # (N, J, 2)
        n = len(x)
        if not arms or not n:
            return real_held
        side = rng.integers(0, len(arms), n)
        kind = rng.integers(0, 3, n)                                      # 0 upper, 1 forearm, 2 backwards
        f = np.where(rng.random(n) < 0.5, rng.uniform(0.6, 0.85, n), rng.uniform(1.15, 1.5, n))
        hyper = rng.uniform(30.0, 120.0, n)
        for a, (sign, si, ei, wi) in enumerate(arms):
            m = torch.as_tensor(side == a, device=self.device)
            up, fore = x[:, ei] - x[:, si], x[:, wi] - x[:, ei]
            fac = torch.as_tensor(f, dtype=x.dtype, device=self.device)[:, None]
            k = torch.as_tensor(kind, device=self.device)[:, None]
            t = torch.as_tensor(np.deg2rad(-sign * hyper), dtype=x.dtype, device=self.device)
            u = up / up.norm(dim=-1, keepdim=True).clamp_min(1e-6) * fore.norm(dim=-1, keepdim=True)
            back = torch.stack([t.cos() * u[:, 0] - t.sin() * u[:, 1], t.sin() * u[:, 0] + t.cos() * u[:, 1]], -1)
            new_up = torch.where(k == 0, up * fac, up)
            new_fore = torch.where(k == 1, fore * fac, torch.where(k == 2, back, fore))
            e2 = x[:, si] + new_up
            x[:, ei] = torch.where(m[:, None], e2, x[:, ei])
            x[:, wi] = torch.where(m[:, None], e2 + new_fore, x[:, wi])
        return held_sequences(self._own_frame(x), real_held.shape[1])

    def train_step(self) -> dict[str, float]:
        """``n_critic`` critic updates, one quality-discriminator and one generator update."""
        c = self.cfg
        rng = np.random.default_rng([c.seed, self.step])
        torch.manual_seed((c.seed * 1_000_003 + self.step) % (2**63))
        p = c.past
        out: dict[str, float] = {}
        reals = [self._batch(rng) for _ in range(c.n_critic)]
        with torch.no_grad():                       # one generator pass for all critic batches
            past = torch.cat([r[:, :p] for r in reals])
            fut = self.G(past, c.future, torch.randn(past.shape[0], c.z_dim, device=self.device))
            fakes = torch.cat([past, fut], 1).split(c.batch_size)
        n_nda = int(round(c.batch_size * c.nda_fraction))
        n_held = min(int(round(c.batch_size * c.held_fraction)), c.batch_size - n_nda)
        for i, (real, fake) in enumerate(zip(reals, fakes)):
            if n_held:   # the single-pose view: real frames vs generated frames, held still
                real_held = self._held(real, n_held, 0, rng)
                fake_held = self._held(fake, n_held, p, rng)
                n_pose = int(round(n_held * c.pose_nda_fraction))
                if n_pose:
                    fake_held = torch.cat([fake_held[:n_held - n_pose], self._pose_negatives(
                        self._held(reals[(i + 1) % len(reals)], n_pose, 0, rng), rng)])
                real = torch.cat([real, real_held])
                fake = torch.cat([fake, fake_held])
            if n_nda:
                fake = torch.cat([fake[:c.batch_size - n_nda], self._negatives(rng, n_nda), fake[c.batch_size:]])
            d_real, d_fake = self.C(real).mean(), self.C(fake).mean()
            gp = gradient_penalty(self.C, real, fake)
            loss_c = d_fake - d_real + c.lambda_gp * gp
            self.opt_c.zero_grad(set_to_none=True)
            loss_c.backward()
            self.opt_c.step()
            if i == 0:
                q_real, q_fake = self.Q(real), self.Q(fake)
                loss_q = F.binary_cross_entropy_with_logits(q_real, torch.ones_like(q_real)) + \
                    F.binary_cross_entropy_with_logits(q_fake, torch.zeros_like(q_fake))
                self.opt_q.zero_grad(set_to_none=True)
                loss_q.backward()
                self.opt_q.step()
                out.update(q_loss=float(loss_q.detach()), quality=float(torch.sigmoid(q_fake.detach()).mean()))
        out.update(c_loss=float(loss_c.detach()), wasserstein=float((d_real - d_fake).detach()), gp=float(gp.detach()))
        real = self._batch(rng)
        z = torch.randn(real.shape[0], c.z_dim, device=self.device)
        self.C.requires_grad_(False)
        fut = self.G(real[:, :p], c.future, z)
        fake = torch.cat([real[:, :p], fut], 1)
        if n_held:
            fake = torch.cat([fake, self._held(fake, n_held, p, rng)])
        adv = -self.C(fake).mean()
        self.C.requires_grad_(True)
        own = real[:, p - 1]
        bl = bone_loss(fut, own, self.bones)
        cl = consistency_loss(own, fut)
        loss_g = adv + c.lambda_bone * bl + c.lambda_consistency * cl
        if not torch.isfinite(loss_g):
            raise TrainingError(f"step {self.step}: the generator loss is {float(loss_g)}; lower --lr-g/--lr-d "
                                f"(the last good state is in {self.run / 'checkpoints'})")
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()
        bones = self.bones.cpu().numpy()
        out.update(g_adv=float(adv.detach()), g_bone=float(bl.detach()), g_consistency=float(cl.detach()),
                   bone_err_pct=bone_length_error(fut.detach().cpu().numpy(), own.cpu().numpy(), bones))
        return out

    # ---- loop --------------------------------------------------------------------------
    def fit(self) -> dict[str, float]:
        c = self.cfg
        csv_name = "losses.csv"
        rows = [r for r in self.dir.read_csv(csv_name) if int(r["step"]) <= self.step]   # none past the checkpoint
        last: dict[str, float] = {}
        bar = tqdm(total=c.steps, initial=self.step, desc="train-motion", unit="it", disable=not self.progress,
                   dynamic_ncols=True)
        self.G.train()
        self.C.train()
        self.Q.train()
        t0 = time.perf_counter()
        start = self.step
        try:
            while self.step < c.steps:
                last = self.train_step()
                self.step += 1
                rows.append({"step": self.step, **{k: f"{v:.6g}" for k, v in last.items()}})
                if self.step % c.log_every == 0 or self.step == c.steps:
                    bar.set_postfix({k: f"{last[k]:.3g}" for k in ("wasserstein", "g_bone", "bone_err_pct", "quality")})
                    self.dir.write_csv(csv_name, rows)
                if self.step % c.picture_every == 0 or self.step == c.steps:
                    self.picture()
                out_of_time = c.time_limit_min > 0 and time.perf_counter() - t0 > c.time_limit_min * 60
                if self.step % c.checkpoint_every == 0 or self.step == c.steps or out_of_time:
                    self.dir.write_csv(csv_name, rows)
                    self.save()
                bar.update()
                if out_of_time:
                    self.picture()
                    log.info("time limit of %g min reached at step %d; stopping (resume with --resume)",
                             c.time_limit_min, self.step)
                    break
        finally:
            bar.close()
        self.dir.write_csv(csv_name, rows)
        last = dict(last)
        last["seconds_per_step"] = (time.perf_counter() - t0) / max(self.step - start, 1)
        if self.progress:
            thr = self.threshold["threshold"] if self.threshold else float("nan")
            print(f"train-motion: {self.step} steps, {last['seconds_per_step']:.3f} s/step, "
                  f"{self.num_windows[0]} training windows; bone-length error of generated futures "
                  f"{last.get('bone_err_pct', float('nan')):.2f}%; plausibility threshold {thr:.4g}; "
                  f"pictures: {self.run / 'predictions.png'}")
        return last

    @torch.no_grad()
    def picture(self, examples: int = 4, samples: int = 2) -> Path:
        """``RUN/predictions.png``: for ``examples`` held-out windows, the real sequence and
        ``samples`` generated futures (past in grey), as skeleton strips."""
        import cv2

        c = self.cfg
        idx = np.linspace(0, len(self.val_x) - 1, min(examples, len(self.val_x))).round().astype(int)
        x = self.val_x[torch.as_tensor(idx, device=self.device)]
        g = torch.Generator(device="cpu").manual_seed(c.seed)
        was = self.G.training
        self.G.eval()
        futs = [self.G(x[:, :c.past], c.future, torch.randn(len(x), c.z_dim, generator=g).to(self.device)).cpu().numpy()
                for _ in range(samples)]
        self.G.train(was)
        xn = x.cpu().numpy()
        rows = [(xn[i, :c.past], [xn[i, c.past:]] + [f[i] for f in futs]) for i in range(len(xn))]
        img = draw_strips(rows, self.layout)
        path = self.run / "predictions.png"
        ok, buf = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        from ...io import atomic_write_bytes

        atomic_write_bytes(path, buf.tobytes())
        return path


class TrainingError(PosesynthError):
    """Training cannot go on (a non-finite loss)."""


@dataclass
class MotionRun:
    """A trained motion run, loaded for use (networks in eval mode on ``device``)."""

    G: MotionGenerator
    C: SequenceCritic
    Q: SequenceCritic
    layout: KeypointLayout
    cfg: MotionConfig
    norm: Normaliser
    threshold: float
    meta: dict[str, Any]
    device: torch.device

    @property
    def length(self) -> int:
        return self.cfg.past + self.cfg.future


def load_motion(run_dir: "str | Path", device: "str | torch.device" = "cpu", checkpoint: str = "latest") -> MotionRun:
    """The networks, layout, config and plausibility threshold of a ``train-motion`` run."""
    run = Path(run_dir)
    path = run / "checkpoints" / checkpoint
    if not run.exists():
        raise PosesynthError(f"{run}: no such motion run (train one with posesynth train-motion)")
    tensors, meta = load_checkpoint(path)
    if meta.get("kind") != "posesynth-motion":
        raise PosesynthError(f"{path}: not a posesynth motion checkpoint")
    cfg = config_from_dict(MotionConfig, meta["config"], str(path))
    mcfg = MotionModelConfig(**meta["model"])
    nets = (MotionGenerator(mcfg), SequenceCritic(mcfg), SequenceCritic(mcfg))
    for prefix, mod in zip("GCQ", nets):
        load_module(mod, tensors, prefix, str(path))
    dev = torch.device(device)
    g, cr, q = (m.to(dev).eval().requires_grad_(False) for m in nets)
    layout = KeypointLayout.from_dict(meta["layout"], source=str(path))
    return MotionRun(g, cr, q, layout, cfg, Normaliser.for_layout(layout), float(meta["plausibility"]["threshold"]),
                     meta, dev)
