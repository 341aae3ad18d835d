"""Pose-network training with rendered poses: the one place that turns augmentation options
into the pose trainer's batch transform.

The pose trainer (:class:`~posesynth.posenet.trainer.PoseNetTrainer`) knows nothing of
rendering: it takes any ``batch_transform(batch, step) -> batch``.  This module builds that
transform (a :class:`~posesynth.augment.mixing.BatchMixer`) for ``train-posenet
--renderer/--gan`` (:func:`build_pose_trainer`) and for the overfitting experiment
(:func:`build_mixer`, with the renderers and judge loaded once by :func:`load_renderer` and
:func:`load_judge`), so both check the same things the same way:

- the renderer is built before any run folder is made (a GAN run that cannot render the
  data's poses, or draws other pose maps than the pose run, is refused in one line);
- ``--gan`` is accepted only by the renderers that use a generator;
- ``--rare`` reads the training set's arms in the run's layout
  (:func:`~posesynth.datasets.formats.source_annotations`);
- a judge must predict the data's layout and draw the same pose maps.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import check_numbers
from ..datasets.formats import KeypointSource, data_options, open_dataset, source_annotations
from ..datasets.layouts import KeypointLayout
from ..datasets.posemaps import PoseMapSpec
from ..errors import ConfigError, PosesynthError
from ..posenet.load import load_posenet
from ..posenet.trainer import POSE_NUMBERS, PoseNetTrainer, PoseTrainConfig, init_distributed
from ..runs import resolve_gan_device
from ..spade.load import check_same_maps
from .mixing import BatchMixer
from .perturb import PerturbConfig, Perturber, check_mode
from .renderers import GAN_RENDERERS, RENDERERS, Renderer, make_renderer

__all__ = ["AugmentedPoseConfig", "build_pose_trainer", "build_mixer", "load_renderer", "load_judge",
           "renderer_name"]


#: the augmentation options' allowed values (config.check_numbers), beside the pose network's
AUGMENT_NUMBERS = {**POSE_NUMBERS, "fraction": "[0,1]", "judge_pck": "[0,1]", "post_scale": ">0",
                   "post_translate": "[0,1)"}


@dataclass
class AugmentedPoseConfig(PoseTrainConfig):
    """``train-posenet``'s settings: the pose network's (:class:`PoseTrainConfig`) and how
    part of every batch is replaced by renders of perturbed poses."""

    renderer: str = field(default="", metadata={
        "help": "replace part of each batch with renders: " + "|".join(RENDERERS) + " (unset: no renders, or gan when "
                "--gan is given)"})
    gan: str = field(default="", metadata={
        "help": "train-gan run that renders: for --renderer gan in its mode (full or inpaint), for --renderer refine a "
                "refine-mode run (unset: none)"})
    gan_device: str = field(default="auto", metadata={"help": "where the generator runs (auto: a GPU of its own "
                                                              "when there is one, else --device)"})
    fraction: float = field(default=0.5, metadata={"help": "expected share of each batch replaced by renders"})
    augment: str = field(default="arms-angle", metadata={"help": "perturbation of the rendered poses: arms-angle|"
                                                                 "arms-slight|arms-high|learned:RUN"})
    rare: bool = field(default=False, metadata={"help": "draw new arm angles where the training data is thin"})
    plausibility: str = field(default="", metadata={
        "help": "train-motion run whose critic filters perturbations (unset: none)"})
    judge: str = field(default="", metadata={
        "help": "pose-network run that must recognise each render's pose, else the render is dropped (unset: none)"})
    judge_pck: float = field(default=0.5, metadata={"help": "a render is kept when the judge's PCK@0.2 on it "
                                                            "reaches this"})
    post_scale: tuple[float, float] = field(default=(0.9, 1.1), metadata={
        "help": "with renders: the range of a random resize of every mixed batch (min,max)"})
    post_translate: float = field(default=0.05, metadata={"help": "with renders: random shift (fraction of the size)"})

    def validate(self) -> None:
        super().validate()
        renderer_name(self.renderer, self.gan)
        check_numbers(self, AUGMENT_NUMBERS)
        if self.post_scale[0] > self.post_scale[1]:
            raise ConfigError(f"--post-scale must be LOW,HIGH with LOW <= HIGH, not {self.post_scale}")
        if self.renderer or self.gan:
            check_mode(self.augment)


def renderer_name(renderer: str, gan: str) -> str:
    """The renderer ``--renderer``/``--gan`` ask for (``""``: none), or a clear error for a
    combination that would silently drop one of them."""
    name = renderer or ("gan" if gan else "")
    if name and name not in RENDERERS:
        raise ConfigError(f"renderer must be one of {', '.join(RENDERERS)}, not {name!r}")
    if gan and name not in GAN_RENDERERS:
        raise ConfigError(f"--gan is used by --renderer {' or '.join(GAN_RENDERERS)}; the {name} renderer needs no "
                          "GAN run (leave out --gan, or choose --renderer gan)")
    if name in GAN_RENDERERS and not gan:
        raise ConfigError(f"--renderer {name} needs --gan RUN (a train-gan run folder)")
    return name


def load_renderer(name: str, layout: KeypointLayout, spec: PoseMapSpec, gan: str = "",
                  device: "str | torch.device" = "cpu", what: str = "this pose run") -> Renderer:
    """The renderer ``name`` for data in ``layout``, checked to draw the pose maps ``spec``
    that the pose runs it feeds are trained with."""
    r = make_renderer(name, layout, gan, str(device))
    rspec = getattr(r, "spec", None)
    if rspec is not None:   # a generator must draw the pose maps the pose network learns
        check_same_maps(rspec, spec, f"GAN run {gan}", what)
    return r


def load_judge(run: str, layout: KeypointLayout, device: "str | torch.device" = "cpu") -> torch.nn.Module:
    """A frozen pose network that must recognise each render's pose, checked to predict
    ``layout``."""
    judge, jl, _ = load_posenet(run, device)
    if jl.keypoints != layout.keypoints:
        raise ConfigError(f"judge {run} predicts layout '{jl.name}', the data is '{layout.name}'")
    return judge


def build_mixer(layout: KeypointLayout, spec: PoseMapSpec, fill: str, *, renderer: "Renderer | None" = None,
                fraction: float = 0.5, augment: str = "arms-angle", rare: bool = False,
                source: "KeypointSource | None" = None, plausibility: str = "", judge: "torch.nn.Module | None" = None,
                judge_pck: float = 0.5, post_scale: tuple[float, float] = (0.9, 1.1), post_translate: float = 0.05,
                device: "str | torch.device" = "cpu", gan_device: "str | torch.device | None" = None,
                seed: int = 0) -> BatchMixer:
    """The batch transform of one pose run: ``fill`` ``render`` (with ``renderer``),
    ``real-dup`` or ``none``; ``rare`` builds the arm-angle histogram of ``source`` (the run's
    training set) in ``layout``."""
    if rare and source is None:
        raise ConfigError("--rare needs the training data to count its arm angles")
    gdev = str(gan_device if gan_device is not None else device)
    kps = source_annotations(source) if rare else None
    perturber = Perturber(PerturbConfig(augment, rare=rare), layout, kps, plausibility, gdev)
    return BatchMixer(layout, spec, fraction, fill, renderer if fill == "render" else None, perturber, device,
                      seed=seed, post_scale=tuple(post_scale), post_translate=post_translate,
                      judge=judge if fill == "render" else None, judge_pck=judge_pck, judge_device=gdev)


def build_pose_trainer(cfg: PoseTrainConfig, run_dir: "str | Path", resume: bool = False,
                       source: "KeypointSource | None" = None, val_source: "KeypointSource | None" = None,
                       progress: bool = True) -> PoseNetTrainer:
    """The pose trainer of ``train-posenet``: with ``cfg.renderer``/``cfg.gan`` (an
    :class:`AugmentedPoseConfig`), part of every batch is rendered from perturbed poses.
    Everything the renders need is loaded and checked before the run folder is made."""
    cfg.validate()
    name = renderer_name(getattr(cfg, "renderer", ""), getattr(cfg, "gan", ""))
    if not name:
        return PoseNetTrainer(cfg, run_dir, source=source, val_source=val_source, resume=resume, progress=progress)
    rank, world, local, device = init_distributed(cfg.device)
    if source is None:
        source = open_dataset(cfg.data, layout=cfg.layout or None, **data_options(cfg))
    if len(source) == 0:
        raise PosesynthError(f"{cfg.data or 'the training data'}: no usable training images")
    gan_device = resolve_gan_device(cfg.gan_device, device, local, world)
    what = f"this pose run ({run_dir})"
    renderer = load_renderer(name, source.layout, cfg.posemaps, cfg.gan, gan_device, what)
    judge = load_judge(cfg.judge, source.layout, gan_device) if cfg.judge else None
    # each rank perturbs and renders its own slots from its own seed stream
    mixer = build_mixer(source.layout, cfg.posemaps, "render", renderer=renderer, fraction=cfg.fraction,
                        augment=cfg.augment, rare=cfg.rare, source=source, plausibility=cfg.plausibility, judge=judge,
                        judge_pck=cfg.judge_pck, post_scale=cfg.post_scale, post_translate=cfg.post_translate,
                        device=device, gan_device=gan_device, seed=cfg.seed * 1000 + rank)
    return PoseNetTrainer(cfg, run_dir, source=source, val_source=val_source, resume=resume, progress=progress,
                          batch_transform=mixer)
