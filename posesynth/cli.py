"""``posesynth <command>``: the command-line interface.

Users' mistakes (a missing file, a malformed annotation) print one clear message and exit
with status 2; pass ``--debug`` for the traceback.
"""
from __future__ import annotations

import argparse
import errno
import logging
import sys
from pathlib import Path

from .errors import PosesynthError

__all__ = ["main", "build_parser"]


def _cmd_make_data(a: argparse.Namespace) -> None:
    from .datasets.make_data import make_synthetic_dataset
    from .io import ensure_writable_dir

    if a.num < 1:
        raise PosesynthError("--num must be at least 1")
    if a.size % 32:
        raise PosesynthError(f"--size must be a multiple of 32 (the models' stride), not {a.size}")
    ensure_writable_dir(a.out)   # a read-only place or a file in the way: one clear line before any work
    if a.sequences is not None:  # clips of smooth arm motion (train-motion data)
        from .datasets.make_data import make_sequence_dataset

        if a.sequences < 1 or a.length < 2:
            raise PosesynthError("--sequences must be at least 1 and --length at least 2")
        make_sequence_dataset(a.out, a.sequences, a.length, a.seed, a.size, a.pose_range, a.passenger_prob,
                              a.workers, passenger_pose_range=a.passenger_pose_range)
        return
    make_synthetic_dataset(a.out, a.num, a.seed, a.size, a.pose_range, a.passenger_prob, a.workers,
                           passenger_pose_range=a.passenger_pose_range)


def _cmd_show(a: argparse.Namespace) -> None:
    import cv2
    import numpy as np

    from .datasets.formats import open_dataset
    from .datasets.visualize import make_grid
    from .io import ensure_writable_dir

    if a.num < 1:
        raise PosesynthError("--num must be at least 1")
    ds = open_dataset(a.data, layout=a.layout, on_error=a.on_error, image_dir=a.image_dir,
                      out_of_frame=a.out_of_frame)
    out = Path(a.out)
    if out.suffix.lower() not in (".png", ".jpg", ".jpeg"):
        raise PosesynthError(f"{out}: use a .png or .jpg name for the grid")
    ensure_writable_dir(out.parent)
    n = min(a.num, len(ds))
    idx = np.linspace(0, len(ds) - 1, n).round().astype(int) if a.spread else range(n)
    grid = make_grid([ds[int(i)] for i in idx], ds.layout, cols=a.cols, cell=a.cell)
    if out.is_dir() or not cv2.imwrite(str(out), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR)):
        raise PosesynthError(f"{out}: cannot write the image there")
    print(f"wrote {out} ({n} samples of {len(ds)}, layout {ds.layout.name})")


def _cmd_check(a: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .datasets.formats import open_dataset
    from .errors import DatasetError

    # every problem is printed below, once: the readers' own warnings would repeat them
    quiet = logging.getLogger("posesynth.datasets")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        ds = open_dataset(a.data, layout=a.layout, on_error="skip", image_dir=a.image_dir,
                          out_of_frame=a.out_of_frame, allow_empty=True)
        people = failed = 0
        if a.read:
            for i in tqdm(range(len(ds)), desc="check --read", unit="img", leave=False):
                try:
                    people += ds.load(i).num_people
                except DatasetError as err:
                    ds.problems.record(str(err), err.kind)
                    failed += 1
    finally:
        quiet.setLevel(level)
    for e in ds.errors:
        print("problem:", e)
    for n in ds.notes:
        print("note:", n)
    if hasattr(ds, "describe"):   # several datasets read as one
        print(f"datasets: {ds.describe()}")
    usable = len(ds) - failed
    print(f"{a.data}: {usable} usable images" + (f", {people} people" if a.read else "")
          + f", layout {ds.layout.name} ({ds.layout.num_channels} pose-map channels), {len(ds.errors)} skipped")
    if ds.errors:
        print("problems by kind: " + ", ".join(f"{n} {k}" for k, n in ds.problem_counts().items()))
    if usable == 0:
        raise PosesynthError(f"{a.data}: no usable images" + (f" ({ds.problems.summary()})" if ds.errors else ""))
    return 1 if ds.errors else 0


def _frame_range(text: str) -> "tuple[int, int | None]":
    """``"START:STOP"`` (STOP optional) -> ``(start, stop)``, for argparse."""
    a, sep, b = text.partition(":")
    try:
        if not sep:
            raise ValueError
        return int(a or 0), (int(b) if b else None)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not START:STOP (e.g. 0:48, or 48: to the end)") from None


def _cmd_convert(a: argparse.Namespace) -> None:
    from .datasets.export import convert_dataset, export_yolo

    fn = export_yolo if a.format == "yolo" else convert_dataset
    r = fn(a.src, a.out, layout=a.layout, every=a.every, on_error=a.on_error, image_dir=a.image_dir,
           out_of_frame=a.out_of_frame, frames=a.frames)
    for v in r.get("videos", []):
        print(f"clip {v['id']}: {v['fps']:g} fps" + (f", every {v['every']}th frame kept" if v["every"] > 1 else "")
              if v.get("fps") else f"clip {v['id']}: its frame rate is unknown (transfer --fps sets one)")
    for n in r.get("export_notes", []):
        print("note:", n)
    print(f"wrote {r['yaml'] if a.format == 'yolo' else r['annotations']}: {r['images']} images, {r['people']} "
          f"people, layout {r['layout']}"
          + (f"; {r['skipped']} skipped ({', '.join(f'{n} {k}' for k, n in r['problems'].items())})"
             if r["skipped"] else ""))


def _cmd_merge(a: argparse.Namespace) -> None:
    from .datasets.export import merge_datasets

    r = merge_datasets(a.datasets, a.out, layout=a.layout, on_error=a.on_error, image_dir=a.image_dir,
                       out_of_frame=a.out_of_frame)
    print(f"wrote {r['annotations']}: {r['images']} images (ids 1..{r['images']}), {r['people']} people from "
          f"{len(a.datasets)} datasets, layout {r['layout']}"
          + (f"; {r['skipped']} skipped ({', '.join(f'{n} {k}' for k, n in r['problems'].items())})"
             if r["skipped"] else ""))


def _cmd_train_gan(a: argparse.Namespace) -> None:
    from .config import given_options, read_config_file, run_config
    from .spade.config import check_mode_options
    from .spade.trainer import GANConfig, GANTrainer, keep_saved_losses

    cfg = run_config(GANConfig, a, a.out, a.resume)
    given = given_options(a, a.resume)
    check_mode_options(cfg, given)
    if a.resume:
        keep_saved_losses(cfg.resolve(), set(read_config_file(Path(a.out) / "config.yaml")), given)
    if not cfg.data:
        raise PosesynthError("--data is required (a dataset folder or annotation file)")
    if cfg.mode == "refine":   # trained on warp round trips of the data, prepared in augment
        from .augment.refine import refine_trainer

        refine_trainer(cfg, Path(a.out), resume=a.resume).fit()
        return
    GANTrainer(cfg, Path(a.out), resume=a.resume).fit()


def _cmd_render(a: argparse.Namespace) -> None:
    from .augment.render import render_dataset

    render_dataset(a.data, a.out, a.renderer, a.gan, a.num, a.augment, a.seed, a.device, a.size,
                   image_dir=a.image_dir or None, on_error=a.on_error, out_of_frame=a.out_of_frame)


def _cmd_render_quality(a: argparse.Namespace) -> None:
    from .augment.render import QualityConfig, render_pairs, render_quality
    from .config import config_from_args

    cfg = config_from_args(QualityConfig, a)
    if cfg.pairs:
        render_pairs(cfg)
        return
    if not cfg.data:
        raise PosesynthError("--data (or --pairs CLIP) is required")
    render_quality(cfg)


def _cmd_train_posenet(a: argparse.Namespace) -> None:
    from .augment.training import AugmentedPoseConfig, build_pose_trainer
    from .config import run_config
    from .posenet.trainer import shutdown_distributed

    cfg = run_config(AugmentedPoseConfig, a, a.out, a.resume)
    if not cfg.data:
        raise PosesynthError("--data is required (a dataset folder or annotation file)")
    build_pose_trainer(cfg, Path(a.out), resume=a.resume).fit()
    shutdown_distributed()   # under torchrun: the group init_distributed made


def _cmd_evaluate(a: argparse.Namespace) -> None:
    from .posenet.evaluate import evaluate_run

    evaluate_run(a.posenet, a.data, a.out, a.device, multi_person=a.multi_person, image_dir=a.image_dir,
                 on_error=a.on_error, out_of_frame=a.out_of_frame, checkpoint=a.checkpoint)


def _cmd_predict(a: argparse.Namespace) -> None:
    from .posenet.evaluate import predict_images

    predict_images(a.posenet, a.images, a.out, a.device, on_error=a.on_error, multi_person=a.multi_person,
                   image_ids=a.image_ids, checkpoint=a.checkpoint)


def _cmd_experiment(a: argparse.Namespace) -> None:
    from .augment.experiment import ExperimentConfig, run_experiment
    from .config import config_from_args

    cfg = config_from_args(ExperimentConfig, a)
    s = run_experiment(cfg)
    print(f"report: {Path(cfg.out) / 'report.html'}")
    keys = s["keys"]
    for r in s["rows"]:
        cs = r["conditions"]
        line = ", ".join(f"{k} {v[keys['test']]['mean']:.3f} ± {v[keys['test']]['sd']:.3f} "
                         f"(train {v[keys['train']]['mean']:.3f})" for k, v in cs.items())
        print(f"  {r['n']} training images, test PCK@0.2 at {keys['when']}, mean ± sd over seeds "
              f"(training PCK): {line}")
        for k, v in [*r["compare"].items(), *r.get("compare_real_dup", {}).items()]:
            share = v.get("oracle_share", float("nan"))
            print("    " + v["verdict"] + (f"; closes {100 * share:.0f}% of the oracle gap" if share == share else
                                            "; no oracle gap to close (the oracle is not above the baseline)"
                                            if "oracle_gap" in v else ""))
        arms = [v for table in r.get("compare_arms", {}).values() for v in table.values() if v["seeds"]]
        if arms:
            print("    secondary, the elbows and wrists alone (the joints the renders move):")
        for v in arms:
            print("      " + v["verdict"])
        if r.get("note"):
            print(f"    note: {r['note']}")


def _cmd_generate(a: argparse.Namespace) -> None:
    from .config import config_from_args
    from .augment.generate import GenerateConfig, generate_dataset, merge_shards

    cfg = config_from_args(GenerateConfig, a)
    if not cfg.out:
        raise PosesynthError("--out is required")
    if a.merge:
        merge_shards(cfg.out)
        return
    if not cfg.data:
        raise PosesynthError("--data is required")
    generate_dataset(cfg)


def _cmd_extract(a: argparse.Namespace) -> None:
    from .posenet.extract import extract_video

    r = extract_video(a.video, a.out, every=a.every, detector=a.detector, device=a.device, weights=a.weights,
                      max_people=a.max_people, min_score=a.min_score, image_ext=a.image_ext)
    print(f"wrote {r['annotations']}: {r['frames']} frames, {r['people']} people ({r['layout']}), "
          f"{r['frames_without_person']} frames without a person")


def _cmd_transfer(a: argparse.Namespace) -> None:
    from .augment.transfer import transfer_from_run
    from .io import ensure_writable_dir

    out = Path(a.out)
    if out.suffix.lower() not in (".mp4", ".m4v", ".mov"):
        raise PosesynthError(f"{out}: use an .mp4 name for the video")
    if not a.speed > 0:
        raise PosesynthError(f"--speed must be positive, not {a.speed}")
    if a.motion_steps < 0:
        raise PosesynthError("--motion-steps must be 0 (as many as the source has) or more")
    ensure_writable_dir(out.parent)
    sbs = None if a.no_side_by_side else (a.side_by_side or "auto")
    r = transfer_from_run(a.gan, a.source, out, sbs, mirror=a.mirror, speed=a.speed, motion=a.motion,
                          motion_steps=a.motion_steps, seed=a.seed, normalise=not a.no_normalise,
                          detector=a.detector, every=a.every, fps=a.fps, batch_size=a.batch_size, device=a.device)
    v = r["video"]
    if not r.get("fps_from"):
        print(f"{a.source} records no frame rate: writing {v.fps:g} fps (give the source's with --fps)")
    print(f"wrote {v.path}: {v.frames} frames of {v.size[0]}x{v.size[1]} (H x W) at {v.fps:g} fps"
          + (f" (from {r['fps_from']})" if r.get("fps_from") else "")
          + f", {'H.264' if v.is_h264 else v.codec}"
          + (f" ({r['continued_frames']} continued by the motion model)" if r["continued_frames"] else "")
          + f"; {1000 * r['seconds_per_frame']:.0f} ms/frame to render")
    if r["side_by_side"] is not None:
        print(f"wrote {r['side_by_side'].path}: source | skeleton | render")


def _cmd_evaluate_generator(a: argparse.Namespace) -> None:
    from .spade.evaluate import evaluate_generator, format_generator_metrics

    res = evaluate_generator(a.gan, a.data, detector=a.detector, device=a.device, batch_size=a.batch_size,
                             out=a.out, reference=not a.no_reference, grid=a.grid, weights=a.weights,
                             image_dir=a.image_dir, on_error=a.on_error, out_of_frame=a.out_of_frame)
    print(format_generator_metrics(res))


def _cmd_train_motion(a: argparse.Namespace) -> None:
    from .augment.motion.trainer import MotionConfig, MotionTrainer
    from .config import run_config

    cfg = run_config(MotionConfig, a, a.out, a.resume)
    if not cfg.data:
        raise PosesynthError("--data is required (pose sequences: a video dataset, COCO with video ids, "
                             "make-data --sequences output, or a BlazePose JSON)")
    MotionTrainer(cfg, Path(a.out), resume=a.resume).fit()


def _cmd_motion_metrics(a: argparse.Namespace) -> None:
    from .augment.motion.evaluate import evaluate_motion

    evaluate_motion(a.motion, a.data, a.num, a.seed, a.device, a.horizon, a.out)


def _cmd_demo(a: argparse.Namespace) -> None:
    from .demo import run_demo

    run_demo(Path(a.out), quick=a.quick)


def _add_data_options(p: argparse.ArgumentParser, on_error: bool = True) -> None:
    """--image-dir, --on-error and --out-of-frame: how a command reads a dataset (the fields of
    :class:`~posesynth.datasets.formats.DataOptions`, which the training commands embed)."""
    import dataclasses

    from .datasets.formats import DataOptions
    from .datasets.reading import OUT_OF_FRAME_CHOICES

    fields = {f.name: f for f in dataclasses.fields(DataOptions)}
    g = p.add_argument_group("data options")
    g.add_argument("--image-dir", default=None, help=fields["image_dir"].metadata["help"])
    if on_error:
        g.add_argument("--on-error", choices=["skip", "raise"], default="skip",
                       help=fields["on_error"].metadata["help"] + " (default: skip)")
    g.add_argument("--out-of-frame", choices=list(OUT_OF_FRAME_CHOICES), default="unlabel",
                   help=fields["out_of_frame"].metadata["help"] + " (default: unlabel)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="posesynth", description="Render correctly labelled training images from "
                                "perturbed poses to reduce overfitting in pose estimation.")
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    m = sub.add_parser("make-data", help="write a synthetic driver-scene COCO dataset")
    m.add_argument("--out", required=True, help="output folder (images/, masks/, annotations.json)")
    m.add_argument("--num", type=int, default=256, help="number of images (default 256)")
    m.add_argument("--seed", type=int, default=0, help="seed of the scenes: the same seed draws the same images")
    m.add_argument("--size", type=int, default=384, help="image width and height in pixels (default 384)")
    m.add_argument("--pose-range", choices=["narrow", "wide"], default="narrow",
                   help="arm-pose distribution: narrow (driving) or wide (any plausible pose)")
    m.add_argument("--passenger-prob", type=float, default=0.3, help="share of scenes with a passenger (default 0.3)")
    m.add_argument("--passenger-pose-range", choices=["narrow", "wide"], default=None,
                   help="the passenger's arm poses (default: the driver's --pose-range)")
    m.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    m.add_argument("--sequences", type=int, default=None, metavar="N",
                   help="write N clips of smooth arm motion instead of single scenes (--num is then unused)")
    m.add_argument("--length", type=int, default=40, metavar="T", help="frames per clip with --sequences (default 40)")
    m.set_defaults(func=_cmd_make_data)

    s = sub.add_parser("show", help="draw a grid of samples with skeletons, PAF arrows and masks")
    s.add_argument("data", help="dataset folder or annotation JSON (COCO, MPII, BlazePose+video)")
    s.add_argument("--out", required=True, help="output image (.png)")
    s.add_argument("--num", type=int, default=16, help="samples to draw (the first N, or spread with --spread)")
    s.add_argument("--cols", type=int, default=4, help="tiles per row of the grid")
    s.add_argument("--cell", type=int, default=256, help="tile size in pixels")
    s.add_argument("--layout", default=None, help="convert to this layout (e.g. driver9; unset: the data's own)")
    s.add_argument("--spread", action="store_true", help="pick samples spread over the dataset")
    _add_data_options(s)
    s.set_defaults(func=_cmd_show)

    c = sub.add_parser("check", help="validate a dataset and report every problem")
    c.add_argument("data", help="dataset folder or annotation JSON (COCO, MPII, BlazePose+video)")
    c.add_argument("--layout", default=None, help="read the data in this layout (built-in name or YAML file; unset: "
                                                   "the data's own)")
    c.add_argument("--read", action="store_true", help="also decode every image and mask")
    _add_data_options(c, on_error=False)
    c.set_defaults(func=_cmd_check)

    cv = sub.add_parser("convert", help="write any readable keypoint data (COCO, MPII, BlazePose+video) as a "
                                        "COCO dataset with its images")
    cv.add_argument("src", help="dataset folder or annotation JSON (COCO, MPII, BlazePose JSON beside its video)")
    cv.add_argument("--out", required=True, help="new output folder (annotations.json, images/)")
    cv.add_argument("--layout", default=None, help="convert the keypoints to this layout (built-in name or YAML file; "
                                                    "unset: the source's own, coco17 for MPII and BlazePose)")
    cv.add_argument("--every", type=int, default=1, help="keep every N-th sample or video frame (default 1: all)")
    cv.add_argument("--frames", type=_frame_range, default=None, metavar="START:STOP",
                    help="keep samples (video frames) START to STOP-1, 0-based in the source's order; "
                         "STOP may be left out (to the end), e.g. 0:48 and 48: for a training and a held-out part")
    cv.add_argument("--format", choices=["coco", "yolo"], default="coco",
                    help="coco: a COCO dataset folder; yolo: Ultralytics YOLO-pose (images/, labels/*.txt, data.yaml "
                         "with kpt_shape and flip_idx)")
    _add_data_options(cv)
    cv.set_defaults(func=_cmd_convert)

    mg = sub.add_parser("merge", help="write several datasets of one layout as one COCO dataset (unique ids, each "
                                      "image's source recorded)")
    mg.add_argument("datasets", nargs="+", metavar="DATA",
                    help="two or more dataset folders or annotation JSON files (COCO, MPII, BlazePose+video)")
    mg.add_argument("--out", required=True, help="new output folder (annotations.json, images/, masks/)")
    mg.add_argument("--layout", default=None,
                    help="convert every dataset to this layout (built-in name or YAML file); without it they must "
                         "share one")
    _add_data_options(mg)
    mg.set_defaults(func=_cmd_merge)
    from .config import add_config_args
    from .spade.trainer import GANConfig

    g = sub.add_parser("train-gan", help="train a pose-to-image generator on a keypoint dataset (--arch spade, "
                                         "pix2pix, vanilla or nearest)",
                       usage="%(prog)s --data DATA --out RUN [--config FILE] [--resume] [options]")
    g.add_argument("--out", required=True, help="run directory (config, checkpoints, losses.csv, web/ gallery)")
    g.add_argument("--config", metavar="FILE", help="YAML file of GANConfig options (command-line options win)")
    g.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped")
    add_config_args(g, GANConfig)
    g.set_defaults(func=_cmd_train_gan)

    r = sub.add_parser("render", help="render perturbed poses of a dataset (look at them: OUT/index.html)")
    r.add_argument("--data", required=True, help="dataset to render (folder or annotation JSON; several: A,B)")
    r.add_argument("--out", required=True, help="output folder: one picture per image (source | perturbed pose maps "
                                                 "| render, plain and with keypoints) and index.html")
    r.add_argument("--renderer", default="", help="warp|gan|refine (default: gan when --gan is given, else warp)")
    r.add_argument("--gan", default="", help="train-gan run folder: for --renderer gan in its mode (full or inpaint; "
                                             "any arch in full mode), for --renderer refine a refine-mode run "
                                             "(unset: none)")
    r.add_argument("--num", type=int, default=16, help="images to render: the first N of --data")
    r.add_argument("--augment", default="arms-angle",
                   help="perturbation (arms-angle|arms-slight|arms-high|poses:FILE|learned:RUN), or none for the "
                        "images' own poses")
    r.add_argument("--seed", type=int, default=0, help="seed of the perturbations: image i gets the arm pose drawn "
                                                        "with (seed, i), so a rerun gives the same poses")
    r.add_argument("--size", type=int, default=0, help="render at this square size (default: the GAN's, else the "
                                                        "images' own)")
    r.add_argument("--device", default="auto", help="where the renderer runs: auto (CUDA when present, else cpu), "
                                                     "cpu, cuda or cuda:N")
    _add_data_options(r)
    r.set_defaults(func=_cmd_render)

    from .augment.render import QualityConfig

    rq = sub.add_parser("render-quality", help="measure renders: paired PSNR/SSIM on synthetic scenes, judge PCK",
                        usage="%(prog)s --data DATA --out OUT [--renderer warp,gan] [--gan RUN] [--judge RUN] "
                              "[--config FILE] [options]")
    rq.add_argument("--config", metavar="FILE", help="YAML file of QualityConfig options (command-line options win)")
    add_config_args(rq, QualityConfig)
    rq.set_defaults(func=_cmd_render_quality)

    from .augment.training import AugmentedPoseConfig

    t = sub.add_parser("train-posenet", help="train the pose network (torchrun for data parallel)",
                       usage="%(prog)s --data DATA --out RUN [--val VAL] [--config FILE] [--resume] [options]")
    t.add_argument("--out", required=True, help="run directory (config, checkpoints, history.csv, curves.png)")
    t.add_argument("--config", metavar="FILE", help="YAML file of train-posenet options (command-line options win)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped")
    add_config_args(t, AugmentedPoseConfig)
    t.set_defaults(func=_cmd_train_posenet)

    ck_help = ("which weights: best (the run's best by its validation metric; latest when it kept none), latest, or "
               "a checkpoint file NAME.safetensors (its NAME.json beside it) (default: best)")
    e = sub.add_parser("evaluate", help="metrics of a trained pose network on a dataset")
    e.add_argument("--posenet", required=True, help="pose-network run directory (train-posenet --out)")
    e.add_argument("--data", required=True, help="dataset to score, in the run's layout (folder or annotation JSON; "
                                                 "several: A,B)")
    e.add_argument("--out", help="metrics JSON (default: RUN/metrics_<data name>.json, one file per dataset)")
    e.add_argument("--checkpoint", default="best", metavar="best|latest|FILE", help=ck_help)
    e.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    e.add_argument("--multi-person", action="store_true", default=None,
                   help="decode several people by PAF grouping (default: as the run was trained)")
    _add_data_options(e)
    e.set_defaults(func=_cmd_evaluate)

    pr = sub.add_parser("predict", help="draw a trained pose network's predictions on a folder of images and write "
                                        "them in COCO's results format")
    pr.add_argument("--posenet", required=True, help="pose-network run directory (train-posenet --out)")
    pr.add_argument("--images", required=True, help="folder of images (.jpg, .jpeg, .png, .bmp, .webp)")
    pr.add_argument("--out", required=True, help="output folder: one drawing per image, predictions.json and "
                                                 "coco_results.json")
    pr.add_argument("--checkpoint", default="best", metavar="best|latest|FILE", help=ck_help)
    pr.add_argument("--multi-person", action="store_true", default=None,
                    help="decode several people per image by PAF grouping (default: as the run was trained)")
    pr.add_argument("--image-ids", default=None, metavar="COCO_JSON",
                    help="COCO annotation file whose image ids the results use, matched by file name (default: a "
                         "file named by a number has that id, else 1..N in name order)")
    pr.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    pr.add_argument("--on-error", choices=["skip", "raise"], default="skip",
                    help="an unreadable image: skip it with a warning (default) or stop (exit status 2)")
    pr.set_defaults(func=_cmd_predict)

    from .augment.experiment import ExperimentConfig

    x = sub.add_parser("experiment", help="measure whether rendered poses (warp or GAN) reduce overfitting",
                       description="Measure whether rendered poses (warp or GAN) reduce overfitting: train the pose "
                                   "network under every condition with identical budgets, transforms and seeds, "
                                   "select on --val, report on --test.",
                       usage="%(prog)s overfitting --data DATA --val VAL --test TEST [--out OUT] [--oracle ORACLE] "
                             "[--gan RUN] [--conditions C1,C2,...] [--config FILE] [options]")
    x.add_argument("name", choices=["overfitting"], help="the experiment")
    x.add_argument("--config", metavar="FILE", help="YAML file of ExperimentConfig options (command-line options win)")
    add_config_args(x, ExperimentConfig)
    x.set_defaults(func=_cmd_experiment)

    from .augment.generate import GenerateConfig

    gn = sub.add_parser("generate", help="write a synthetic COCO dataset rendered from perturbed poses",
                        usage="%(prog)s --data DATA --out OUT [--renderer warp|gan] [--gan RUN] [--per-image K] "
                              "[--with-source true] [--config FILE] [--merge] [options]")
    gn.add_argument("--config", metavar="FILE", help="YAML file of GenerateConfig options (command-line options win)")
    gn.add_argument("--merge", action="store_true", help="merge the shard annotation files in --out and exit")
    add_config_args(gn, GenerateConfig)
    gn.set_defaults(func=_cmd_generate)

    ex = sub.add_parser("extract", help="detect people in a video's frames and write a COCO dataset")
    ex.add_argument("video", help="video file (read in order, never by seeking)")
    ex.add_argument("--out", required=True, help="output dataset folder (images/, annotations.json)")
    ex.add_argument("--every", type=int, default=1, help="keep every N-th frame (default 1: all)")
    ex.add_argument("--detector", default="mediapipe",
                    help="mediapipe (BlazePose, needs the optional mediapipe package) | keypointrcnn (torchvision, "
                         "COCO weights from the torch hub cache or --weights) | posenet:RUN (a train-posenet run)")
    ex.add_argument("--weights", default=None, help="Keypoint R-CNN weights file (default: the torch hub cache)")
    ex.add_argument("--max-people", type=int, default=1, help="people kept per frame, best first (0: all; default 1)")
    ex.add_argument("--min-score", type=float, default=None,
                    help="detector confidence for a keypoint to be labelled (default: the detector's)")
    ex.add_argument("--image-ext", choices=[".jpg", ".png"], default=".jpg", help="file type of the frames written")
    ex.add_argument("--device", default="cpu", help="where the detector runs: cpu, cuda or cuda:N")
    ex.set_defaults(func=_cmd_extract)

    tr = sub.add_parser("transfer", help="make a GAN run's person perform a video's moves (Everybody Dance Now)")
    tr.add_argument("--gan", required=True, help="train-gan run folder (any arch, full mode)")
    tr.add_argument("--source", required=True, help="video (people detected with --detector) or keypoint dataset "
                                                     "(COCO with frame ids, BlazePose JSON beside its video)")
    tr.add_argument("--out", required=True, help="the rendered video (.mp4)")
    tr.add_argument("--side-by-side", default=None,
                    help="the source | skeleton | render video (default: OUT_side_by_side.mp4)")
    tr.add_argument("--no-side-by-side", action="store_true", help="write no side-by-side video")
    tr.add_argument("--mirror", action="store_true", help="mirror the source's moves left-right")
    tr.add_argument("--speed", type=float, default=1.0, help="play the moves at this speed (0.5: slow motion)")
    tr.add_argument("--motion", default=None, help="train-motion run: continue the source's motion after its end")
    tr.add_argument("--motion-steps", type=int, default=0,
                    help="frames the motion model adds (default 0: as many as the source has)")
    tr.add_argument("--seed", type=int, default=0, help="the motion model's noise")
    tr.add_argument("--no-normalise", action="store_true",
                    help="place the source's poses as they are in its frame (no global pose normalisation)")
    tr.add_argument("--detector", default="mediapipe", help="for a video source: mediapipe | keypointrcnn | "
                                                            "posenet:RUN")
    tr.add_argument("--every", type=int, default=1, help="video source: use every N-th frame")
    tr.add_argument("--fps", type=float, default=None, help="frame rate of the output (default: the source's, "
                                                            "else 25)")
    tr.add_argument("--batch-size", type=int, default=8, help="frames rendered at once")
    tr.add_argument("--device", default="cpu", help="where the generator runs: cpu, cuda or cuda:N")
    tr.set_defaults(func=_cmd_transfer)

    eg = sub.add_parser("evaluate-generator", help="PSNR, SSIM and pose consistency of a GAN run's renders of "
                                                   "held-out frames")
    eg.add_argument("--gan", required=True, help="train-gan run folder (any arch, full mode)")
    eg.add_argument("--data", required=True, help="held-out frames of the target person (any readable dataset)")
    eg.add_argument("--detector", default="mediapipe",
                    help="finds the person in the renders: mediapipe | keypointrcnn | posenet:RUN | none (no pose "
                         "consistency)")
    eg.add_argument("--weights", default=None, help="Keypoint R-CNN weights file (default: the torch hub cache)")
    eg.add_argument("--no-reference", action="store_true", help="do not also score the detector on the real frames")
    eg.add_argument("--out", default=None, help="results JSON (default RUN/generator_metrics.json)")
    eg.add_argument("--grid", default=None, help="also write a PNG of every frame: stick figure | render | real")
    eg.add_argument("--batch-size", type=int, default=8, help="frames rendered at once")
    eg.add_argument("--device", default="cpu", help="where the generator and the detector run: cpu, cuda or cuda:N")
    _add_data_options(eg)
    eg.set_defaults(func=_cmd_evaluate_generator)

    from .augment.motion.trainer import MotionConfig

    mo = sub.add_parser("train-motion", help="train the HP-GAN motion model on pose sequences",
                        usage="%(prog)s --data DATA --out RUN [--config FILE] [--resume] [options]")
    mo.add_argument("--out", required=True, help="run directory (config, checkpoints, losses.csv, predictions.png)")
    mo.add_argument("--config", metavar="FILE", help="YAML file of MotionConfig options (command-line options win)")
    mo.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped")
    add_config_args(mo, MotionConfig)
    mo.set_defaults(func=_cmd_train_motion)

    mm = sub.add_parser("motion-metrics", help="bone-length error, angle histograms and critic ratings of a motion run")
    mm.add_argument("--motion", required=True, help="train-motion run directory")
    mm.add_argument("--data", required=True, help="pose sequences to measure on (best held out)")
    mm.add_argument("--num", type=int, default=500, help="windows and poses to use (default 500)")
    mm.add_argument("--seed", type=int, default=0, help="seed of the windows, poses and noise drawn")
    mm.add_argument("--horizon", type=int, default=None, help="learned sampler: future frames to draw from")
    mm.add_argument("--out", default=None, help="results JSON (default RUN/motion_metrics.json)")
    mm.add_argument("--device", default="cpu", help="where the models run: cpu, cuda or cuda:N")
    mm.set_defaults(func=_cmd_motion_metrics)

    d = sub.add_parser("demo", help="the main job of `make demo`")
    d.add_argument("--out", default="runs/demo", help="output folder (data, runs, report.html)")
    d.add_argument("--quick", action="store_true", help="tiny sizes, for tests")
    d.set_defaults(func=_cmd_demo)
    _show_defaults(p)
    return p


def _show_defaults(parser: argparse.ArgumentParser) -> None:
    """Append ``(default: X)`` to every option whose help does not name its default yet (flags,
    empty defaults and the config options, which say theirs, are left as they are)."""
    from .config import format_default

    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            for sp in a.choices.values():
                _show_defaults(sp)
            continue
        if not a.option_strings or a.help in (None, argparse.SUPPRESS) or a.dest.startswith("cfg_") or \
                isinstance(a.default, bool) or a.default in (None, argparse.SUPPRESS):
            continue
        shown = format_default(a.default)
        if shown is not None and "default" not in a.help.lower():
            a.help = f"{a.help} (default: {shown})"


_USER_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR, errno.EISDIR,
                errno.EEXIST, errno.ENOENT}


def _os_error_line(e: OSError) -> str:
    """``PATH: Permission denied``-style text for an OSError, with a hint where one helps."""
    why = e.strerror or e.__class__.__name__
    if isinstance(e, (NotADirectoryError, FileExistsError)):
        why += " (a file is where a folder should be)"
    elif e.errno == errno.ENOSPC:
        why += " (the disk is full)"
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        why += " (choose a writable place)"
    return f"{e.filename}: {why}" if e.filename else why


#: the plain (non-config) numeric options of each command and their allowed values
#: (:func:`posesynth.config.check_number`), checked before a command reads or writes anything;
#: the ``train-*``, ``experiment``, ``generate`` and ``render-quality`` options are checked by
#: their config's ``validate()``
ARG_NUMBERS: dict[str, dict[str, str]] = {
    "make-data": {"num": ">=1", "seed": ">=0", "size": ">=64", "passenger_prob": "[0,1]", "workers": ">=1",
                  "sequences": ">=1", "length": ">=2"},
    "show": {"num": ">=1", "cols": ">=1", "cell": ">=16"},
    "convert": {"every": ">=1"},
    "render": {"num": ">=1", "seed": ">=0", "size": ">=0"},
    "extract": {"every": ">=1", "max_people": ">=0", "min_score": "[0,1]"},
    "transfer": {"speed": ">0", "motion_steps": ">=0", "seed": ">=0", "every": ">=1", "fps": ">0",
                 "batch_size": ">=1"},
    "evaluate-generator": {"batch_size": ">=1"},
    "motion-metrics": {"num": ">=1", "seed": ">=0", "horizon": ">=1"},
}


def check_arg_numbers(args: argparse.Namespace) -> None:
    """Refuse an impossible plain numeric option of ``args.command`` (one line, exit 2)."""
    from .config import check_number

    for name, rule in ARG_NUMBERS.get(args.command, {}).items():
        check_number(name, getattr(args, name, None), rule)


def main(argv: "list[str] | None" = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        check_arg_numbers(args)   # before any command reads or writes anything
        code = args.func(args)   # a command may return an exit status (check: 1 when it found problems)
    except PosesynthError as e:
        if args.debug:
            raise
        print(f"posesynth {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        # a path that cannot be written or read (read-only, a file where a folder should be, a full
        # disk): one line naming it.  Other OS errors are not the user's and keep their traceback.
        if args.debug or not (e.filename or e.errno in _USER_ERRNOS):
            raise
        print(f"posesynth {args.command}: error: {_os_error_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
