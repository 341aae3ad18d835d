"""The settings of a ``train-gan`` run (:class:`GANConfig`), with each architecture's defaults
for the options left unset."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from ..config import check_numbers
from ..datasets.formats import DataOptions
from ..datasets.posemaps import PoseMapSpec
from ..errors import ConfigError
from .archs import ARCH_CLASSES, MODES, arch_class
from .losses import GAN_MODES

__all__ = ["GANConfig", "GAN_NUMBERS", "ARCH_DEFAULTS", "ARCHS", "MODES", "NETGS", "keep_saved_losses",
           "check_mode_options"]

log = logging.getLogger(__name__)
NETGS = ("unet", "resnet")
ARCHS = tuple(dict.fromkeys(c.name for c in ARCH_CLASSES))
#: The value each architecture gives the options left unset (``None``) in a :class:`GANConfig`
#: (each architecture's ``defaults``).  spade's are the values these options always had;
#: pix2pix's and vanilla's are pix2pix's (one 70x70 PatchGAN: ``num_d`` 1 with ``n_layers_d``
#: 4; L1 x 100; no feature matching, no VGG).
ARCH_DEFAULTS: dict[str, dict[str, Any]] = {c.name: dict(c.defaults) for c in ARCH_CLASSES}
#: every numeric option's allowed values (config.check_numbers; other floats must be finite)
GAN_NUMBERS = {"ngf": ">=1", "spade_hidden": ">=1", "ndf": ">=1", "num_d": ">=1", "n_layers_d": ">=1",
               "z_dim": ">=0", "lambda_feat": ">=0", "lambda_vgg": ">=0", "lambda_gp": ">=0", "lambda_l1": ">=0",
               "extra_regions": "[0,1]", "region_radius": ">0", "lambda_pose_hm": ">=0", "lambda_pose_paf": ">=0",
               "lambda_pose_mask": ">=0", "sigma": ">0", "paf_width": ">0", "steps": ">=1", "batch_size": ">=1",
               "lr_g": ">=0", "lr_d": ">=0", "beta1": "[0,1)", "beta2": "[0,1)", "decay_from": ">=-1", "seed": ">=0",
               "workers": ">=0", "log_every": ">=1", "gallery_every": ">=1", "checkpoint_every": ">=1",
               "time_limit_min": ">=0", "max_bad_steps": ">=1",
               "crop_size": ">=64", "crop_margin": ">=0", "fill_share": "[0,1]", "ema": "[0,1)"}


@dataclass
class GANConfig:
    """Settings of a GAN run (all overridable on the command line)."""

    data: str = field(default="", metadata={
        "help": "training dataset: a folder or annotation file (COCO, MPII, BlazePose+video), or several as "
                "A,B:WEIGHT (required, here or in --config)"})
    layout: str = field(default="", metadata={"help": "convert the data to this layout (default: its own)"})
    data_options: DataOptions = field(default_factory=DataOptions, metadata={"help": "how the data is read"})
    mode: str = field(default="full", metadata={"help": "full (whole image from pose maps) | refine (correct the limb "
                                                        "warp on a crop; spade) | inpaint (redraw the "
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
        "help": "spade: width of the shared convolution in every SPADE layer (NVlabs 128; 32-64 for CPU budgets, "
                "16 for a refine-mode run)"})
    ndf: int = field(default=64, metadata={"help": "discriminator width (channels of its first layer)"})
    num_d: "int | None" = field(default=None, metadata={"help": "discriminator scales (unset: spade 2, pix2pix and "
                                                                "vanilla 1, the 70x70 PatchGAN with n_layers_d 4)"})
    n_layers_d: int = field(default=4, metadata={"help": "convolution layers per discriminator scale"})
    norm: str = field(default="instance", metadata={"help": "param-free norm in SPADE: instance|batch"})
    z_dim: int = field(default=0, metadata={
        "help": "noise channels fed with the downsampled maps (a render draws each image's noise from a seed of that "
                "image's own inputs: the same image and pose give the same render in any batch)"})
    gan_mode: str = field(default="hinge", metadata={"help": "hinge|ls|wgan-gp"})
    lambda_feat: "float | None" = field(default=None, metadata={
        "help": "feature-matching weight (unset: spade 10, pix2pix and vanilla 0)"})
    lambda_vgg: "float | None" = field(default=None, metadata={
        "help": "VGG perceptual weight (unset: spade 10, pix2pix and vanilla 0)"})
    lambda_gp: float = field(default=10.0, metadata={"help": "gradient-penalty weight (--gan-mode wgan-gp)"})
    lambda_l1: "float | None" = field(default=None, metadata={
        "help": "L1 weight: spade inpaint mode inside the region, spade full mode on the whole image (unset: "
                "20); pix2pix and vanilla on the whole image (unset: 100); 0: none"})
    extra_regions: float = field(default=0.5, metadata={
        "help": "inpaint mode: share of images whose region also covers other plausible arm positions"})
    region_radius: float = field(default=0.16, metadata={
        "help": "inpaint mode: radius of the capsules around the arm bones, as a fraction of the torso size "
                "(plus 0.04 margin and a 0.05 feathered edge); recorded with the run and used when it renders"})
    crop_size: int = field(default=128, metadata={
        "help": "refine mode: the side of the square crop around the changed region that the generator sees "
                "(multiple of 32); --size is not used in refine mode"})
    crop_margin: float = field(default=0.25, metadata={
        "help": "refine mode: margin added around the changed region's bounding box, as a fraction of its side"})
    fill_share: float = field(default=0.3, metadata={
        "help": "refine mode: share of training samples that erase the arms and draw them back (the rest are "
                "warp round trips p -> p' -> p)"})
    background: str = field(default="", metadata={
        "help": "refine mode, a static camera: a clip of it (dataset folder or file) or a PNG of the empty scene; "
                "the warp fills the area an arm leaves with what the camera saw there (saved with the run as "
                "background.png and used when it renders frames of that size; unset: inpainting only)"})
    limb_bank: str = field(default="", metadata={
        "help": "refine mode, a static camera's clip (dataset folder or file; with --background): the round trips' "
                "warp moves its frames' arms and fills the body an arm hid from them, as --limb-bank does when the "
                "refiner renders (a training image's own frame and the 2 frames either side of it are left out)"})
    bank_body: bool = field(default=True, metadata={
        "help": "refine mode, with --limb-bank: the round trips also fill what a moved arm hid of the body from the "
                "bank's frames, as --bank-body does when the refiner renders (false: arms only)"})
    vgg: str = field(default="auto", metadata={"help": "auto (use if weights are found)|on (required)|off"})
    vgg_weights: str = field(default="", metadata={
        "help": "VGG19 weights file (unset: ~/.cache/torch/hub/checkpoints/vgg19-dcbb9e9d.pth)"})
    pose_judge: str = field(default="", metadata={
        "help": "pose-network run whose frozen network judges pose consistency (train-posenet --out; unset: no pose "
                "loss)"})
    lambda_pose_hm: float = field(default=100.0, metadata={
        "help": "pose-consistency weight on the judge's heatmaps (MSE; with --pose-judge)"})
    lambda_pose_paf: float = field(default=100.0, metadata={
        "help": "pose-consistency weight on the judge's PAFs (MSE; with --pose-judge)"})
    lambda_pose_mask: float = field(default=1.0, metadata={
        "help": "pose-consistency weight on the judge's masks (Dice-BCE; with --pose-judge)"})
    sigma: float = field(default=7.0, metadata={"help": "heatmap sigma in input pixels"})
    paf_width: float = field(default=8.0, metadata={"help": "PAF half-width in input pixels"})
    steps: int = field(default=1000, metadata={
        "help": "training steps (generator updates) in all, counting those of a resumed run"})
    batch_size: int = field(default=2, metadata={"help": "images per step"})
    lr_g: "float | None" = field(default=None, metadata={"help": "generator learning rate (unset: spade 1e-4, "
                                                                 "pix2pix and vanilla 2e-4)"})
    lr_d: "float | None" = field(default=None, metadata={"help": "discriminator learning rate (unset: spade 4e-4, "
                                                                 "pix2pix and vanilla 2e-4)"})
    beta1: "float | None" = field(default=None, metadata={"help": "Adam beta1 (unset: spade 0, pix2pix and "
                                                                  "vanilla 0.5)"})
    beta2: "float | None" = field(default=None, metadata={"help": "Adam beta2 (unset: spade 0.9, pix2pix and "
                                                                  "vanilla 0.999)"})
    decay_from: int = field(default=-1, metadata={"help": "step where linear LR decay to 0 starts (-1: none)"})
    ema: float = field(default=0.0, metadata={
        "help": "decay of an exponential moving average of G's weights, which is what the gallery shows and every "
                "renderer loads (the trained weights are saved beside it to resume; 0: off; e.g. 0.99)"})
    device: str = field(default="auto", metadata={"help": "auto (CUDA when present, else cpu)|cpu|cuda:N"})
    precision: str = field(default="auto", metadata={"help": "auto|fp32|bf16|fp16 (bf16/fp16 on CUDA only)"})
    seed: int = field(default=0, metadata={
        "help": "seed of the weights' initialisation, the data order and the augmentation"})
    workers: int = field(default=0, metadata={"help": "DataLoader worker processes (0: load in the main process)"})
    augment: bool = field(default=True, metadata={"help": "random scale/rotation/shift/flip of the training data"})
    log_every: int = field(default=10, metadata={"help": "write a row of losses.csv every N steps"})
    gallery_every: int = field(default=100, metadata={
        "help": "refresh web/index.html (maps | generated | real) every N steps"})
    checkpoint_every: int = field(default=200, metadata={"help": "save a checkpoint every N steps (and at the end)"})
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
            raise ConfigError(f"mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if not arch_class(self.arch, self.mode).learned and self.ema:   # (a mode it lacks: one clear line)
            raise ConfigError(f"--ema averages a trained generator's weights; {self.arch} is not trained")
        if self.netg not in NETGS:
            raise ConfigError(f"netg must be one of {NETGS}, not {self.netg!r}")
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
        if self.background and self.mode != "refine":
            raise ConfigError("--background (a static camera's background plate) applies to --mode refine; the "
                              f"{self.mode} mode draws the region itself")
        if self.limb_bank and (self.mode != "refine" or not self.background or self.background == "none"):
            raise ConfigError("--limb-bank (frames whose arms the round trips' warp moves) applies to --mode refine "
                              "with --background (the bank fills the body an arm hid only with a plate)")
        if not 0 <= self.fill_share <= 1:
            raise ConfigError("fill_share must be in [0, 1]")
        if self.crop_size % 32 or self.crop_size < 64:
            raise ConfigError(f"crop_size must be a multiple of 32 and at least 64, not {self.crop_size}")
        if self.crop_margin < 0:
            raise ConfigError("crop_margin must be 0 or more")
        check_numbers(self, GAN_NUMBERS)

    @property
    def posemaps(self) -> PoseMapSpec:
        """The run's pose maps (in refine mode drawn on the crop)."""
        size = (self.crop_size, self.crop_size) if self.mode == "refine" else tuple(self.size)
        return PoseMapSpec(self.sigma, self.paf_width, 4, size)


#: options that one mode alone reads: given for a run of another mode they would be ignored
MODE_ONLY = {"refine": ("crop_size", "crop_margin", "fill_share")}


def check_mode_options(cfg: GANConfig, given: "set[str]") -> None:
    """Refuse options given (``given``: field names, from the command line or a new run's
    ``--config`` YAML) that the run's mode would silently ignore: the refine-mode crop options
    in another mode, ``--size`` in refine mode (its generator sees crops of ``--crop-size``)."""
    if cfg.mode not in MODES:
        raise ConfigError(f"mode must be one of {', '.join(MODES)}, not {cfg.mode!r}")
    for mode, names in MODE_ONLY.items():
        off = [n for n in names if n in given] if cfg.mode != mode else []
        if off:
            opts = " and ".join("--" + n.replace("_", "-") for n in off)
            raise ConfigError(f"{opts} appl{'ies' if len(off) == 1 else 'y'} to --mode {mode} only; this run's mode "
                              f"is {cfg.mode}, which would ignore {'it' if len(off) == 1 else 'them'}")
    if cfg.mode == "refine" and "size" in given:
        raise ConfigError("--size is not used in refine mode: the generator works on square crops of --crop-size "
                          "px around the changed region, pasted back at the frame's own size")


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
