"""Training a pose-to-image generator (``posesynth train-gan``): the SPADE generator against
the multi-scale PatchGAN, or one of the classic baselines (``--arch``).

Architectures (``--arch``; each one's defaults in :data:`ARCH_DEFAULTS`, used for the options
not given):

- ``spade`` (default): SPADE generator on the pose maps, 2-scale PatchGAN on maps + image,
  hinge + feature matching (+ VGG when its weights exist) + L1 (``--lambda-l1``, 20; inside M
  in inpaint mode), TTUR Adam.  ``--spade-hidden`` sets the width of the SPADE layers' shared
  convolutions (NVlabs 128), which cost most of the generator's time at full resolution.
  Modes below.
- ``pix2pix``: U-Net (``--netg unet``) or ResNet-block (``--netg resnet``) generator on the
  stick-figure image, the 70x70 PatchGAN on stick figure + image, L1 (``--lambda-l1``, 100)
  + GAN loss, Adam 2e-4 with betas 0.5, 0.999, as in pix2pix.
- ``vanilla``: the skeleton vector (normalised 2-D coordinates and visibility flags) to an
  image through transposed convolutions; D, losses and optimiser as pix2pix.
- ``nearest``: no training: ``fit`` stores the training frames (no augmentation, at
  ``--size``) and their skeletons, and the render of a skeleton is the closest training frame
  (KD-tree; :mod:`~posesynth.spade.nearest`).

Every learned generator takes ``--gan-mode hinge|ls|wgan-gp``; feature matching, VGG and the
pose judge (``--pose-judge``) apply to each when their weights are non-zero.

Two modes for ``spade`` (``--mode``):

- ``full``: the generator draws the whole image from the pose maps (the original method).
- ``inpaint`` (region-preserving): the generator also sees the image with a region removed and
  that region's mask (``C + 3 + 1`` conditioning channels through the same SPADE modulation),
  and its output is composited, ``out = M * G + (1 - M) * image``.  Training is
  self-supervised on the user's own images: M covers the arms each image has (capsules
  around upper arm, forearm and hand, sized by the person's torso), plus, for a random half of
  the images, capsules along other plausible arm positions; the true pose maps are given and
  the region is reconstructed.  Losses: hinge (or ls / wgan-gp) on the composite, which the
  discriminator sees with the maps and M; feature matching; VGG where the weights exist; pose
  consistency with ``--pose-judge``; and L1 inside M.

Run directory::

    RUN/config.yaml                  the resolved GANConfig
    RUN/checkpoints/latest.*, previous.*   G, D, both optimizers, step, arch, mode, pose-map settings,
                                     the target's pose statistics for ``transfer``
    RUN/losses.csv                   one row per step
    RUN/web/index.html, web/images/  gallery: maps or stick figure | (input) | generated | real, every
                                     gallery_every steps
    RUN/tb/                          TensorBoard scalars and images (when tensorboard is installed)

Every random draw in step ``s`` comes from generators seeded by ``(seed, s)``, and batches
from :class:`~posesynth.datasets.torch_dataset.EpochBatchSampler`, so ``--resume``
continues exactly: on CPU the losses match an uninterrupted run.
"""
from __future__ import annotations

import dataclasses
import html
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..checkpoint import load_module, module_tensors, optimizer_from_flat, optimizer_to_flat
from ..config import check_numbers, to_dict
from ..datasets.formats import KeypointSource, data_options, open_dataset
from ..datasets.geometry import RegionSpec, arm_chains, arm_from_angles, body_frame, limb_region
from ..datasets.layouts import KeypointLayout
from ..datasets.posemaps import PoseMapSpec
from ..datasets.torch_dataset import EpochBatchSampler, PoseMapDataset, tensor_to_image
from ..datasets.transforms import RandomAffine
from ..datasets.visualize import maps_to_rgb
from ..errors import ConfigError, PosesynthError
from ..io import atomic_write_text
from ..runs import Precision, RunDir, resolve_device
from .baselines import ARCHS, LEARNED_ARCHS, build_generator, d_condition, generator_config, generator_input
from .discriminator import MultiscaleDiscriminator
from .generator import GeneratorConfig, SPADEGenerator
from .load import check_same_maps, load_generator
from .losses import GAN_MODES, PoseConsistencyLoss, VGGLoss, feature_matching_loss, gan_loss, gradient_penalty, load_vgg19
from .nearest import NearestNeighbourGenerator

__all__ = ["GANConfig", "GANTrainer", "TrainingError", "load_generator", "MODES", "ARCHS", "ARCH_DEFAULTS",
           "inpaint_region", "target_pose_stats", "keep_saved_losses"]

log = logging.getLogger(__name__)
MODES = ("full", "inpaint")
NETGS = ("unet", "resnet")
_PIX2PIX_DEFAULTS = dict(ngf=64, num_d=1, lambda_feat=0.0, lambda_vgg=0.0, lambda_l1=100.0, lr_g=2e-4, lr_d=2e-4,
                         beta1=0.5, beta2=0.999)
#: The value each architecture gives the options left unset (``None``) in a :class:`GANConfig`.
#: spade's are the values these options always had; pix2pix's and vanilla's are pix2pix's (one
#: 70x70 PatchGAN: ``num_d`` 1 with ``n_layers_d`` 4; L1 x 100; no feature matching, no VGG).
ARCH_DEFAULTS: dict[str, dict[str, Any]] = {
    "spade": dict(ngf=32, num_d=2, lambda_feat=10.0, lambda_vgg=10.0, lambda_l1=20.0, lr_g=1e-4, lr_d=4e-4,
                  beta1=0.0, beta2=0.9),
    "pix2pix": _PIX2PIX_DEFAULTS,
    "vanilla": _PIX2PIX_DEFAULTS,
    "nearest": _PIX2PIX_DEFAULTS,
}


class TrainingError(PosesynthError):
    """Training cannot go on (e.g. too many non-finite steps)."""


#: every numeric option's allowed values (config.check_numbers; other floats must be finite)
GAN_NUMBERS = {"ngf": ">=1", "spade_hidden": ">=1", "ndf": ">=1", "num_d": ">=1", "n_layers_d": ">=1",
               "z_dim": ">=0", "lambda_feat": ">=0", "lambda_vgg": ">=0", "lambda_gp": ">=0", "lambda_l1": ">=0",
               "extra_regions": "[0,1]", "region_radius": ">0", "lambda_pose_hm": ">=0", "lambda_pose_paf": ">=0",
               "lambda_pose_mask": ">=0", "sigma": ">0", "paf_width": ">0", "steps": ">=1", "batch_size": ">=1",
               "lr_g": ">=0", "lr_d": ">=0", "beta1": "[0,1)", "beta2": "[0,1)", "decay_from": ">=-1", "seed": ">=0",
               "workers": ">=0", "log_every": ">=1", "gallery_every": ">=1", "checkpoint_every": ">=1",
               "time_limit_min": ">=0", "max_bad_steps": ">=1"}


@dataclass
class GANConfig:
    """Settings of a GAN run (all overridable on the command line)."""

    data: str = field(default="", metadata={"help": "training dataset (folder or annotation file)"})
    layout: str = field(default="", metadata={"help": "convert the data to this layout (default: its own)"})
    image_dir: str = field(default="", metadata={"help": "folder the images' file_name values are relative to "
                                                         "(default: see the README's resolution order)"})
    on_error: str = field(default="skip", metadata={"help": "skip (drop bad images, counted and reported) | raise"})
    out_of_frame: str = field(default="unlabel", metadata={"help": "labelled points outside the image: "
                                                                   "unlabel|clip|skip-person|skip-image"})
    mode: str = field(default="full", metadata={"help": "full (whole image from pose maps) | inpaint (redraw the "
                                                        "region around the arms, keep the rest of the image; spade)"})
    arch: str = field(default="spade", metadata={
        "help": "spade (pose maps, SPADE) | pix2pix (stick figure, U-Net or ResNet, 70x70 PatchGAN, L1 x 100) | "
                "vanilla (skeleton vector -> transposed convs) | nearest (closest training frame by KD-tree; "
                "no training)"})
    netg: str = field(default="unet", metadata={"help": "pix2pix generator: unet | resnet"})
    size: tuple[int, int] = field(default=(128, 128), metadata={"help": "image size H,W (multiple of 32)"})
    ngf: "int | None" = field(default=None, metadata={"help": "generator width (unset: spade 32, pix2pix and "
                                                              "vanilla 64)"})
    spade_hidden: int = field(default=128, metadata={
        "help": "spade: width of the shared convolution in every SPADE layer (NVlabs 128; 32-64 for CPU budgets)"})
    ndf: int = 64
    num_d: "int | None" = field(default=None, metadata={"help": "discriminator scales (unset: spade 2, pix2pix and "
                                                                "vanilla 1, the 70x70 PatchGAN with n_layers_d 4)"})
    n_layers_d: int = 4
    norm: str = field(default="instance", metadata={"help": "param-free norm in SPADE: instance|batch"})
    z_dim: int = field(default=0, metadata={"help": "noise channels fed with the downsampled maps"})
    gan_mode: str = field(default="hinge", metadata={"help": "hinge|ls|wgan-gp"})
    lambda_feat: "float | None" = field(default=None, metadata={
        "help": "feature-matching weight (unset: spade 10, pix2pix and vanilla 0)"})
    lambda_vgg: "float | None" = field(default=None, metadata={
        "help": "VGG perceptual weight (unset: spade 10, pix2pix and vanilla 0)"})
    lambda_gp: float = 10.0
    lambda_l1: "float | None" = field(default=None, metadata={
        "help": "L1 weight: spade inpaint mode inside the region, spade full mode on the whole image (unset: "
                "20); pix2pix and vanilla on the whole image (unset: 100); 0: none"})
    extra_regions: float = field(default=0.5, metadata={
        "help": "inpaint mode: share of images whose region also covers other plausible arm positions"})
    region_radius: float = field(default=0.16, metadata={
        "help": "inpaint mode: radius of the capsules around the arm bones, as a fraction of the torso size "
                "(plus 0.04 margin and a 0.05 feathered edge); recorded with the run and used when it renders"})
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
    lr_g: "float | None" = field(default=None, metadata={"help": "generator learning rate (unset: spade 1e-4, "
                                                                 "pix2pix and vanilla 2e-4)"})
    lr_d: "float | None" = field(default=None, metadata={"help": "discriminator learning rate (unset: spade 4e-4, "
                                                                 "pix2pix and vanilla 2e-4)"})
    beta1: "float | None" = field(default=None, metadata={"help": "Adam beta1 (unset: spade 0, pix2pix and "
                                                                  "vanilla 0.5)"})
    beta2: "float | None" = field(default=None, metadata={"help": "Adam beta2 (unset: spade 0.9, pix2pix and "
                                                                  "vanilla 0.999)"})
    decay_from: int = field(default=-1, metadata={"help": "step where linear LR decay to 0 starts (-1: none)"})
    device: str = field(default="auto", metadata={"help": "auto (CUDA when present, else cpu)|cpu|cuda:N"})
    precision: str = field(default="auto", metadata={"help": "auto|fp32|bf16|fp16 (bf16/fp16 on CUDA only)"})
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

    def resolve(self) -> "GANConfig":
        """Give every option left unset (``None``) its architecture's value (:data:`ARCH_DEFAULTS`),
        in place; returns ``self``.  A run records the resolved config."""
        if self.arch not in ARCHS:
            raise ConfigError(f"arch must be one of {', '.join(ARCHS)}, not {self.arch!r}")
        for k, v in ARCH_DEFAULTS[self.arch].items():
            if getattr(self, k) is None:
                setattr(self, k, v)
        return self

    def validate(self) -> None:
        self.resolve()
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {MODES}, not {self.mode!r}")
        if self.netg not in NETGS:
            raise ConfigError(f"netg must be one of {NETGS}, not {self.netg!r}")
        if self.mode == "inpaint" and self.arch != "spade":
            raise ConfigError(f"inpaint mode is for --arch spade; {self.arch} draws the whole image (--mode full)")
        if self.gan_mode not in GAN_MODES:
            raise ConfigError(f"gan_mode must be one of {GAN_MODES}, not {self.gan_mode!r}")
        if self.vgg not in ("auto", "on", "off"):
            raise ConfigError(f"vgg must be auto, on or off, not {self.vgg!r}")
        if any(s % 32 or s < 64 for s in self.size):
            raise ConfigError(f"size {self.size} must be multiples of 32 and at least 64 (the generator starts "
                              "at size/32, and instance norm needs more than one pixel)")
        if self.batch_size < 1 or self.steps < 1:
            raise ConfigError("batch_size and steps must be at least 1")
        if self.ngf < 1 or self.ndf < 1 or self.num_d < 1 or self.n_layers_d < 1 or self.spade_hidden < 1:
            raise ConfigError("ngf, ndf, num_d, n_layers_d and spade_hidden must be at least 1")
        if not 0 <= self.extra_regions <= 1:
            raise ConfigError("extra_regions must be in [0, 1]")
        check_numbers(self, GAN_NUMBERS)

    @property
    def posemaps(self) -> PoseMapSpec:
        return PoseMapSpec(self.sigma, self.paf_width, 4, tuple(self.size))


def keep_saved_losses(cfg: GANConfig, saved: "set[str]", given: "set[str]") -> bool:
    """Resuming a spade full-mode run saved before full mode had an L1 term: its config
    (``saved``: the keys of its config.yaml, which then had no ``spade_hidden``) records the
    arch's ``lambda_l1`` 20 although it was unused, so the run keeps training without L1
    (``lambda_l1`` 0) unless ``--lambda-l1`` is given now (``given``).  Returns whether it changed
    ``cfg``."""
    if ("spade_hidden" in saved or "lambda_l1" in given or cfg.arch != "spade" or cfg.mode != "full"
            or not cfg.lambda_l1):
        return False
    log.info("this run was saved before spade's full mode had an L1 term: it goes on without one (lambda_l1 0); "
             "give --lambda-l1 to add it")
    cfg.lambda_l1 = 0.0
    return True


def _seed_step(seed: int, step: int) -> None:
    torch.manual_seed((seed * 1_000_003 + step) % (2**63))


def _random_arms(kp: np.ndarray, layout: KeypointLayout, rng: np.random.Generator,
                 abd_range=(-30.0, 175.0), max_flexion: float = 150.0) -> np.ndarray:
    """A copy of ``(P, K, 3)`` keypoints with every labelled arm in a random pose within the
    joint ranges (abduction, flexion; the person's bone lengths): where an inpainting region
    may have to erase or draw an arm."""
    out = kp.copy()
    for p in range(kp.shape[0]):
        fr = body_frame(kp[p].astype(np.float64), layout)
        if fr is None:
            continue
        _, down, across = fr
        for s, e, w in arm_chains(layout):
            if (kp[p, [s, e, w], 2] <= 0).any():
                continue
            outv = -across if layout.keypoints[s].startswith("right") else across
            sh = kp[p, s, :2].astype(np.float64)
            up, fo = np.linalg.norm(kp[p, e, :2] - sh), np.linalg.norm(kp[p, w, :2] - kp[p, e, :2])
            el, wr = arm_from_angles(sh, np.array(rng.uniform(*abd_range)), np.array(rng.uniform(0, max_flexion)),
                                     up, fo, down, outv)
            out[p, e, :2], out[p, w, :2] = el, wr
    return out


def inpaint_region(keypoints: np.ndarray, layout: KeypointLayout, size: tuple[int, int], rng: np.random.Generator,
                   extra: float = 0.5, spec: RegionSpec = RegionSpec(), device: "str | torch.device" = "cpu"
                   ) -> torch.Tensor:
    """The self-supervised training region M ``(B, 1, H, W)``: every labelled arm of each image,
    plus, for a share ``extra`` of the images, the arms at random plausible positions."""
    kp = np.asarray(keypoints, np.float32)
    own = limb_region(kp, None, layout, size, spec, device)
    pick = rng.random(kp.shape[0]) < extra
    if not pick.any():
        return own
    moved = np.stack([_random_arms(k, layout, rng) if pk else k for k, pk in zip(kp, pick)])
    return torch.maximum(own, limb_region(kp, moved, layout, size, spec, device))


def target_pose_stats(source: KeypointSource, max_samples: int = 2000) -> "dict[str, Any] | None":
    """The training person's :class:`~posesynth.augment.transfer.PoseStats` (as a dict), which
    ``transfer`` places a source's poses by; computed on the first person of every sample (an
    evenly spaced ``max_samples`` of them in larger datasets), in the samples' own frame
    pixels.  ``None``, with a note, where they cannot be had (frames of different sizes, or a
    layout without hips or ankles)."""
    from ..augment.transfer import pose_stats

    n = len(source)
    idx = np.unique(np.linspace(0, n - 1, min(n, max_samples)).round().astype(int)) if n else []
    kps, sizes = [], set()
    for i in idx:
        s = source[int(i)]
        sizes.add(s.image.shape[:2])
        k = np.zeros((1, source.layout.num_keypoints, 3), np.float32)
        if len(s.keypoints):
            k[0] = s.keypoints[0]
        kps.append(k)
    if len(sizes) != 1:
        log.info("no pose statistics for transfer: the training frames have %d sizes", len(sizes))
        return None
    try:
        return pose_stats(np.stack(kps), source.layout, sizes.pop(), source="the training data").to_dict()
    except PosesynthError as e:
        log.info("no pose statistics for transfer: %s", e)
        return None


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
        self.dir = RunDir(self.run)
        self.progress = progress
        self.device = resolve_device(cfg.device)
        self.precision = Precision(cfg.precision, self.device)
        self.precision_d = Precision(cfg.precision, self.device)
        self.source = source if source is not None else open_dataset(cfg.data, layout=cfg.layout or None,
                                                                      **data_options(cfg))
        self.layout: KeypointLayout = self.source.layout
        self.spec = cfg.posemaps
        self.inpaint = cfg.mode == "inpaint"
        self.region_spec = RegionSpec(radius=cfg.region_radius)
        self.arch = cfg.arch
        self.learned = cfg.arch in LEARNED_ARCHS
        tf = RandomAffine(None, scale=(0.9, 1.1), aspect=(0.95, 1.05), rotate=5, translate=0.05, flip_prob=0.5,
                          layout=self.layout) if cfg.augment else None
        # pix2pix and vanilla draw their conditioning from the keypoints: no full-size maps needed
        self.dataset = PoseMapDataset(self.source, tuple(cfg.size), tf, stride=self.spec.stride, spec=self.spec,
                                      seed=cfg.seed, with_maps=cfg.arch == "spade")
        torch.manual_seed(cfg.seed)
        c = self.layout.num_channels
        self.gcfg: "GeneratorConfig | None" = None
        self.G: "nn.Module | None" = None
        self.D: "nn.Module | None" = None
        if cfg.arch == "spade":
            self.gcfg = GeneratorConfig(c + (4 if self.inpaint else 0), tuple(cfg.size), cfg.ngf, "normal", cfg.norm,
                                        True, cfg.z_dim, area_channels=4 if self.inpaint else 0,
                                        hidden=cfg.spade_hidden)
            self.G = SPADEGenerator(self.gcfg).to(self.device)
            self.D = MultiscaleDiscriminator(c + 3 + (1 if self.inpaint else 0), cfg.ndf, cfg.n_layers_d,
                                             cfg.num_d).to(self.device)
        elif self.learned:   # pix2pix, vanilla: D sees the stick figure (3 channels) and the image
            kw = {"z_dim": cfg.z_dim} if cfg.arch == "vanilla" else {}
            self.G = build_generator(cfg.arch, self.layout, tuple(cfg.size), cfg.ngf, cfg.netg, cfg.norm,
                                     **kw).to(self.device)
            self.D = MultiscaleDiscriminator(3 + 3, cfg.ndf, cfg.n_layers_d, cfg.num_d).to(self.device)
        if self.learned and cfg.channels_last:
            self.G.to(memory_format=torch.channels_last)
            self.D.to(memory_format=torch.channels_last)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        if self.learned:
            self.opt_g = torch.optim.Adam(self.G.parameters(), lr=cfg.lr_g, betas=(cfg.beta1, cfg.beta2))
            self.opt_d = torch.optim.Adam(self.D.parameters(), lr=cfg.lr_d, betas=(cfg.beta1, cfg.beta2))
        self.vgg = self._build_vgg() if self.learned else None
        self.pose_loss = None
        if not self.learned and (pose_judge is not None or cfg.pose_judge):
            raise ConfigError("--pose-judge trains a generator; nearest is not trained")
        if pose_judge is None and cfg.pose_judge:
            from ..posenet.load import load_posenet

            pose_judge, judge_layout, jmeta = load_posenet(cfg.pose_judge, self.device)
            if judge_layout.keypoints != self.layout.keypoints or judge_layout.num_masks != self.layout.num_masks:
                raise ConfigError(f"pose judge {cfg.pose_judge} predicts layout '{judge_layout.name}', the GAN data "
                                  f"is '{self.layout.name}'")
            check_same_maps(PoseMapSpec.from_dict(jmeta["posemaps"]), self.spec, f"pose judge {cfg.pose_judge}",
                            f"this GAN run ({self.run})")
        if pose_judge is not None:
            self.pose_loss = PoseConsistencyLoss(pose_judge.to(self.device), cfg.lambda_pose_hm, cfg.lambda_pose_paf,
                                                 cfg.lambda_pose_mask)
        self.step = 0
        self.bad_steps = 0
        self.skipped_steps = 0
        if len(self.source) == 0:
            raise PosesynthError(f"{cfg.data}: no usable training images")
        self.dir.prepare(cfg, resume)
        self.target: "dict[str, Any] | None" = None
        if resume:
            self._load()
        else:
            self.target = target_pose_stats(self.source)

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

    def _loader(self, start: int) -> torch.utils.data.DataLoader:
        sampler = EpochBatchSampler(len(self.dataset), self.cfg.batch_size, self.cfg.seed, start, self.cfg.steps)
        return torch.utils.data.DataLoader(self.dataset, batch_sampler=sampler, num_workers=self.cfg.workers,
                                           persistent_workers=False, pin_memory=self.device.type == "cuda")

    # ---- checkpoints -------------------------------------------------------------------
    def _generator_meta(self) -> dict[str, Any]:
        if self.arch == "spade":
            return dataclasses.asdict(self.gcfg)
        if self.arch == "nearest":
            return {"size": list(self.G.size), "missing_weight": self.G.missing_weight, "frames": len(self.G.frames)}
        return generator_config(self.arch, self.G)

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors = module_tensors(self.G, "G")
        meta = {"kind": "posesynth-gan", "arch": self.arch, "mode": self.cfg.mode, "step": self.step,
                "skipped_steps": self.skipped_steps, "config": to_dict(self.cfg),
                "generator": self._generator_meta(), "layout": self.layout.to_dict(),
                "posemaps": self.spec.to_dict(), "region": dataclasses.asdict(self.region_spec),
                "target": self.target, "fit": self.dataset.fit}
        if self.learned:
            tensors.update(module_tensors(self.D, "D"))
            tg, meta["opt_g"] = optimizer_to_flat(self.opt_g, "opt_g")
            td, meta["opt_d"] = optimizer_to_flat(self.opt_d, "opt_d")
            tensors.update(tg)
            tensors.update(td)
            meta["grad_scaler"] = {"g": self.precision.state_dict(), "d": self.precision_d.state_dict()}
        return tensors, meta

    def save(self, name: str = "latest") -> None:
        tensors, meta = self.state()
        self.dir.save(name, tensors, meta)

    def _load(self) -> None:
        tensors, meta = self.dir.load("latest")
        path = self.dir.ckpt / "latest"
        if meta.get("layout", {}).get("keypoints") != list(self.layout.keypoints):
            raise ConfigError(f"{path}: trained on layout '{meta.get('layout', {}).get('name')}', "
                              f"the data is '{self.layout.name}'")
        if meta.get("mode", "full") != self.cfg.mode:
            raise ConfigError(f"{path}: a {meta.get('mode', 'full')}-mode run cannot continue in {self.cfg.mode} mode")
        if meta.get("arch", "spade") != self.arch:
            raise ConfigError(f"{path}: a {meta.get('arch', 'spade')} run cannot continue as --arch {self.arch}")
        self.target = meta.get("target")
        self.step = int(meta["step"])
        if not self.learned:
            self.G = NearestNeighbourGenerator.from_tensors(tensors, meta, str(path)).to(self.device)
            return
        load_module(self.G, tensors, "G", str(path))
        load_module(self.D, tensors, "D", str(path))
        self.precision.load_state_dict(meta.get("grad_scaler", {}).get("g"))    # fp16: the loss scales
        self.precision_d.load_state_dict(meta.get("grad_scaler", {}).get("d"))
        optimizer_from_flat(self.opt_g, tensors, meta["opt_g"], "opt_g")
        optimizer_from_flat(self.opt_d, tensors, meta["opt_d"], "opt_d")
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

    def region(self, b: dict[str, torch.Tensor], step: int) -> torch.Tensor:
        """Inpaint mode: the region M of this step's images, ``(B, 1, H, W)``."""
        rng = np.random.default_rng([self.cfg.seed, step, 17])
        return inpaint_region(b["keypoints"].cpu().numpy(), self.layout, tuple(self.cfg.size), rng,
                              self.cfg.extra_regions, self.region_spec, device=self.device)

    def _condition(self, b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """pix2pix and vanilla: add the generator's input ``g_in`` (stick figure or skeleton
        vector) and D's condition ``d_cond`` (the stick figure), drawn once per batch."""
        if self.arch != "spade" and "g_in" not in b:
            b["g_in"] = generator_input(self.arch, b, self.layout)
            b["d_cond"] = d_condition(self.arch, b, self.layout, b["g_in"])
            if self.cfg.channels_last:
                b["d_cond"] = b["d_cond"].contiguous(memory_format=torch.channels_last)
                if b["g_in"].dim() == 4:
                    b["g_in"] = b["g_in"].contiguous(memory_format=torch.channels_last)
        return b

    def generate(self, b: dict[str, torch.Tensor], region: "torch.Tensor | None") -> tuple[torch.Tensor, torch.Tensor]:
        """``(raw generator output, image shown to D and the losses)``: the same in full mode,
        the composite ``M * G + (1 - M) * image`` in inpaint mode."""
        if self.arch != "spade":
            fake = self.G(self._condition(b)["g_in"])
            return fake, fake
        maps, real = b["maps"], b["image"]
        if region is None:
            fake = self.G(maps)
            return fake, fake
        hole = (region > 0).to(real.dtype)
        x = torch.cat([maps, real * (1 - hole), hole], 1)
        if self.cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        fake = self.G(x)
        return fake, region * fake + (1 - region) * real

    def _d_input(self, b: dict[str, torch.Tensor], image: torch.Tensor, region: "torch.Tensor | None") -> torch.Tensor:
        cond = b["maps"] if self.arch == "spade" else b["d_cond"]
        parts = [cond] + ([region.to(image.dtype)] if region is not None else []) + [image]
        return torch.cat(parts, 1)

    def _discriminate(self, b, fake: torch.Tensor, real: torch.Tensor, region):
        both = torch.cat([self._d_input(b, fake, region), self._d_input(b, real, region)], 0)
        preds = self.D(both)
        n = fake.shape[0]
        return [[f[:n] for f in s] for s in preds], [[f[n:] for f in s] for s in preds]

    def train_step(self, batch: dict[str, Any]) -> "dict[str, float] | None":
        """One generator and one discriminator update; returns the losses, or ``None`` when
        the step was skipped for a non-finite loss."""
        c = self.cfg
        _seed_step(c.seed, self.step)
        b = self._condition(self._to(batch))
        real = b["image"]
        region = self.region(b, self.step) if self.inpaint else None
        for opt in (self.opt_g, self.opt_d):
            for grp in opt.param_groups:
                grp["lr"] = (c.lr_g if opt is self.opt_g else c.lr_d) * self._lr_factor(self.step)
        # --- generator
        self.D.requires_grad_(False)
        with self.precision.autocast():
            raw, fake = self.generate(b, region)
            if self.arch != "spade" and not c.lambda_feat:   # pix2pix's G loss needs D on the fake alone
                pf = self.D(self._d_input(b, fake, region))
                losses: dict[str, torch.Tensor] = {"g_gan": gan_loss(pf, True, c.gan_mode, for_discriminator=False)}
            else:
                pf, pr = self._discriminate(b, fake, real, region)
                losses = {"g_gan": gan_loss(pf, True, c.gan_mode, for_discriminator=False),
                          "g_feat": feature_matching_loss(pf, pr) * c.lambda_feat}
            if self.vgg is not None:
                losses["g_vgg"] = self.vgg(fake, real) * c.lambda_vgg
            extra: dict[str, float] = {}
            if self.pose_loss is not None:
                losses["g_pose"], extra = self.pose_loss(fake, b["heatmaps"], b["pafs"], b["masks"])
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
        self.precision.step(self.opt_g)
        # --- discriminator
        self.D.requires_grad_(True)
        if c.reuse_fake:
            fake_d = fake.detach()
        else:
            with torch.no_grad(), self.precision.autocast():
                fake_d = self.generate(b, region)[1]
        with self.precision_d.autocast():
            pf, pr = self._discriminate(b, fake_d, real, region)
            losses["d_fake"] = gan_loss(pf, False, c.gan_mode)
            losses["d_real"] = gan_loss(pr, True, c.gan_mode)
            d_total = losses["d_fake"] + losses["d_real"]
        if c.gan_mode == "wgan-gp":
            losses["d_gp"] = gradient_penalty(self.D, self._d_input(b, real, region),
                                              self._d_input(b, fake_d, region)) * c.lambda_gp
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
        if not self.learned:
            return self._fit_nearest()
        rows = [r for r in self.dir.read_csv("losses.csv") if int(r["step"]) <= self.step]
        gallery_batch = None
        last: dict[str, float] = {}
        timed = c.time_limit_min > 0
        # a time-limited run shows time, not steps it will never reach
        bar = tqdm(total=c.time_limit_min * 60 if timed else c.steps, initial=0 if timed else self.step,
                   desc="train-gan", unit="s" if timed else "it", disable=not self.progress, dynamic_ncols=True,
                   bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s [{elapsed}<{remaining}{postfix}]" if timed else None)
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
        dt = time.perf_counter() - t0
        last = dict(last)
        last["seconds_per_step"] = dt / max(self.step - start, 1)
        if self.progress:
            what = c.mode if self.arch == "spade" else self.arch
            print(f"train-gan ({what}): {self.step} steps, {last['seconds_per_step']:.2f} s/step, "
                  f"{self.skipped_steps} skipped; gallery: {self.run / 'web' / 'index.html'}")
        return last

    def _fit_nearest(self) -> dict[str, float]:
        """``--arch nearest``: store every training frame, as the other archs see it without
        augmentation (fitted to ``size``), with its skeleton; nothing is learned."""
        t0 = time.perf_counter()
        if self.G is None:
            plain = PoseMapDataset(self.source, tuple(self.cfg.size), None, stride=self.spec.stride, spec=self.spec,
                                   with_maps=False, max_people=self.dataset.max_people, fit=self.dataset.fit)
            frames, kps = [], []
            for i in tqdm(range(len(plain)), desc="nearest: index frames", unit="frame", disable=not self.progress,
                          dynamic_ncols=True):
                item = plain[i]
                frames.append(tensor_to_image(item["image"]))
                kps.append(item["keypoints"].numpy())
            self.G = NearestNeighbourGenerator(np.stack(frames), np.stack(kps), self.layout).to(self.device)
            self.save()
            loader = torch.utils.data.DataLoader(plain, batch_size=min(4, len(plain)))
            self.gallery({k: v for k, v in next(iter(loader)).items() if torch.is_tensor(v)})
        dt = time.perf_counter() - t0
        if self.progress:
            print(f"train-gan (nearest): {len(self.G.frames)} frames indexed in {dt:.1f} s; "
                  f"gallery: {self.run / 'web' / 'index.html'}")
        return {"frames": float(len(self.G.frames)), "seconds": dt}

    @torch.no_grad()
    def gallery(self, batch: "dict[str, torch.Tensor] | None") -> None:
        """Write ``web/images/step_NNNNNN.png`` (rows of maps | [masked input |] generated |
        real) and refresh ``web/index.html`` (newest first)."""
        if batch is None:
            return
        import cv2

        b = self._to(batch)
        was = self.G.training
        self.G.eval()
        region = self.region(b, 10**9) if self.inpaint else None  # a fixed region for every gallery
        with self.precision.autocast():
            if self.arch == "nearest":
                fake = self.G(b["keypoints"])
            else:
                _, fake = self.generate(b, region)
        self.G.train(was)
        if self.arch != "spade":
            stick = self._condition(b)["d_cond"] if self.arch != "nearest" else \
                d_condition("vanilla", b, self.layout)
        rows = []
        for i in range(fake.shape[0]):
            m = maps_to_rgb(b["maps"][i].float().cpu().numpy(), self.layout) if self.arch == "spade" else \
                tensor_to_image(stick[i].float())
            cols = [m]
            if region is not None:
                hole = (region[i] > 0).float()
                cols.append(tensor_to_image(b["image"][i].float() * (1 - hole) + hole * 0.0))
            cols += [tensor_to_image(fake[i].float()), tensor_to_image(b["image"][i])]
            rows.append(np.concatenate(cols, 1))
        grid = np.concatenate(rows, 0)
        web = self.run / "web"
        (web / "images").mkdir(parents=True, exist_ok=True)
        name = f"step_{self.step:06d}.png"
        cv2.imwrite(str(web / "images" / name), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
        if self.dir.tb is not None:
            self.dir.tb.add_image("gan/gallery", grid, self.step, dataformats="HWC")
        imgs = sorted((web / "images").glob("step_*.png"), reverse=True)
        what = f"{self.cfg.mode} mode" if self.arch == "spade" else self.arch + (
            f", {self.cfg.netg}" if self.arch == "pix2pix" else "")
        body = "\n".join(f"<h3>step {int(p.stem[5:])}</h3><img src='images/{html.escape(p.name)}'>" for p in imgs)
        cols = "pose maps | input with the region removed | generated (composite) | real" if self.inpaint else \
            "pose maps | generated | real" if self.arch == "spade" else \
            "stick figure | closest training frame | real" if self.arch == "nearest" else \
            f"stick figure{' (the skeleton vector, drawn)' if self.arch == 'vanilla' else ''} | generated | real"
        atomic_write_text(web / "index.html",
                          f"<!doctype html><html><head><meta charset='utf-8'><meta http-equiv='refresh' content='60'>"
                          f"<title>{html.escape(self.run.name)}: GAN gallery</title></head><body>"
                          f"<h1>{html.escape(str(self.run))} ({what})</h1><p>columns: {cols}</p>"
                          f"{body}</body></html>")
