"""``posesynth <command>``: the command-line interface.

Users' mistakes (a missing file, a malformed annotation) print one clear message and exit
with status 2; pass ``--debug`` for the traceback.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .errors import PosesynthError

__all__ = ["main", "build_parser"]


def _cmd_make_data(a: argparse.Namespace) -> None:
    from .datasets.make_data import make_synthetic_dataset

    if a.num < 1:
        raise PosesynthError("--num must be at least 1")
    if a.size % 32:
        raise PosesynthError(f"--size must be a multiple of 32 (the models' stride), not {a.size}")
    make_synthetic_dataset(a.out, a.num, a.seed, a.size, a.pose_range, a.passenger_prob, a.workers,
                           passenger_pose_range=a.passenger_pose_range)


def _cmd_show(a: argparse.Namespace) -> None:
    import cv2
    import numpy as np

    from .datasets.formats import open_dataset
    from .datasets.visualize import make_grid

    ds = open_dataset(a.data, layout=a.layout, on_error="skip")
    n = min(a.num, len(ds))
    if n == 0:
        raise PosesynthError(f"{a.data}: no samples to show")
    idx = np.linspace(0, len(ds) - 1, n).round().astype(int) if a.spread else range(n)
    grid = make_grid([ds[int(i)] for i in idx], ds.layout, cols=a.cols, cell=a.cell)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR)):
        raise PosesynthError(f"{out}: cannot write image (use a .png or .jpg name in a writable folder)")
    print(f"wrote {out} ({n} samples of {len(ds)}, layout {ds.layout.name})")


def _cmd_check(a: argparse.Namespace) -> None:
    from .datasets.formats import open_dataset

    ds = open_dataset(a.data, layout=a.layout, on_error="skip")
    people = 0
    for i in range(len(ds)):
        people += ds[i].num_people if a.read else 0
    errs = getattr(ds, "errors", [])
    for e in errs:
        print("problem:", e)
    print(f"{a.data}: {len(ds)} usable images" + (f", {people} people" if a.read else "")
          + f", layout {ds.layout.name} ({ds.layout.num_channels} pose-map channels), {len(errs)} skipped")
    if errs:
        sys.exit(1)


def _cmd_train_gan(a: argparse.Namespace) -> None:
    from .config import run_config
    from .spade.trainer import GANConfig, GANTrainer

    cfg = run_config(GANConfig, a, a.out, a.resume)
    if not cfg.data:
        raise PosesynthError("--data is required (a dataset folder or annotation file)")
    GANTrainer(cfg, Path(a.out), resume=a.resume).fit()


def _cmd_render(a: argparse.Namespace) -> None:
    from .spade.render import render_dataset

    render_dataset(a.gan, a.data, a.out, a.num, a.device)


def _cmd_train_posenet(a: argparse.Namespace) -> None:
    from .config import run_config
    from .posenet.trainer import PoseNetTrainer, PoseTrainConfig

    cfg = run_config(PoseTrainConfig, a, a.out, a.resume)
    if not cfg.data:
        raise PosesynthError("--data is required (a dataset folder or annotation file)")
    PoseNetTrainer(cfg, Path(a.out), resume=a.resume).fit()


def _cmd_evaluate(a: argparse.Namespace) -> None:
    from .posenet.evaluate import evaluate_run

    evaluate_run(a.posenet, a.data, a.out, a.device, multi_person=a.multi_person)


def _cmd_predict(a: argparse.Namespace) -> None:
    from .posenet.evaluate import predict_images

    predict_images(a.posenet, a.images, a.out, a.device)


def _cmd_experiment(a: argparse.Namespace) -> None:
    from .augment.experiment import ExperimentConfig, run_experiment
    from .config import config_from_args

    cfg = config_from_args(ExperimentConfig, a)
    for name in ("data", "val", "gan"):
        if not getattr(cfg, name):
            raise PosesynthError(f"--{name} is required")
    s = run_experiment(cfg)
    print(f"report: {Path(cfg.out) / 'report.html'}")
    for r in s["rows"]:
        print(f"  {r['n']} training images: held-out PCK baseline {r['baseline_best_PCK_mean']:.3f}, "
              f"with GAN {r['gan_best_PCK_mean']:.3f}; AP {r['baseline_best_AP_mean']:.3f} vs {r['gan_best_AP_mean']:.3f}")


def _cmd_generate(a: argparse.Namespace) -> None:
    from .config import config_from_args
    from .spade.generate import GenerateConfig, generate_dataset, merge_shards

    cfg = config_from_args(GenerateConfig, a)
    if not cfg.out:
        raise PosesynthError("--out is required")
    if a.merge:
        merge_shards(cfg.out)
        return
    for name in ("gan", "data"):
        if not getattr(cfg, name):
            raise PosesynthError(f"--{name} is required")
    generate_dataset(cfg)


def _cmd_demo(a: argparse.Namespace) -> None:
    from .demo import run_demo

    run_demo(Path(a.out), quick=a.quick)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="posesynth", description="Render correctly labelled training images from "
                                "perturbed poses to reduce overfitting in pose estimation.")
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    m = sub.add_parser("make-data", help="write a synthetic driver-scene COCO dataset")
    m.add_argument("--out", required=True, help="output folder (images/, masks/, annotations.json)")
    m.add_argument("--num", type=int, default=256, help="number of images (default 256)")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--size", type=int, default=384, help="image width and height in pixels (default 384)")
    m.add_argument("--pose-range", choices=["narrow", "wide"], default="narrow",
                   help="arm-pose distribution: narrow (driving) or wide (any plausible pose)")
    m.add_argument("--passenger-prob", type=float, default=0.3, help="share of scenes with a passenger (default 0.3)")
    m.add_argument("--passenger-pose-range", choices=["narrow", "wide"], default=None,
                   help="the passenger's arm poses (default: the driver's --pose-range)")
    m.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    m.set_defaults(func=_cmd_make_data)

    s = sub.add_parser("show", help="draw a grid of samples with skeletons, PAF arrows and masks")
    s.add_argument("data", help="dataset folder or annotation JSON (COCO, MPII, BlazePose+video)")
    s.add_argument("--out", required=True, help="output image (.png)")
    s.add_argument("--num", type=int, default=16)
    s.add_argument("--cols", type=int, default=4)
    s.add_argument("--cell", type=int, default=256, help="tile size in pixels")
    s.add_argument("--layout", default=None, help="convert to this layout (e.g. driver9)")
    s.add_argument("--spread", action="store_true", help="pick samples spread over the dataset")
    s.set_defaults(func=_cmd_show)

    c = sub.add_parser("check", help="validate a dataset and report every problem")
    c.add_argument("data")
    c.add_argument("--layout", default=None)
    c.add_argument("--read", action="store_true", help="also decode every image and mask")
    c.set_defaults(func=_cmd_check)
    from .config import add_config_args
    from .spade.trainer import GANConfig

    g = sub.add_parser("train-gan", help="train the SPADE generator on a keypoint dataset")
    g.add_argument("--out", required=True, help="run directory (config, checkpoints, losses.csv, web/ gallery)")
    g.add_argument("--config", help="YAML file of GANConfig options (command-line options win)")
    g.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped")
    add_config_args(g, GANConfig)
    g.set_defaults(func=_cmd_train_gan)

    r = sub.add_parser("render", help="render a dataset's poses with a trained generator")
    r.add_argument("--gan", required=True, help="GAN run directory")
    r.add_argument("--data", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--num", type=int, default=16)
    r.add_argument("--device", default="cpu")
    r.set_defaults(func=_cmd_render)

    from .posenet.trainer import PoseTrainConfig

    t = sub.add_parser("train-posenet", help="train the pose network (torchrun for data parallel)")
    t.add_argument("--out", required=True, help="run directory (config, checkpoints, history.csv, curves.png)")
    t.add_argument("--config", help="YAML file of PoseTrainConfig options (command-line options win)")
    t.add_argument("--resume", action="store_true")
    add_config_args(t, PoseTrainConfig)
    t.set_defaults(func=_cmd_train_posenet)

    e = sub.add_parser("evaluate", help="metrics of a trained pose network on a dataset")
    e.add_argument("--posenet", required=True, help="pose-network run directory")
    e.add_argument("--data", required=True)
    e.add_argument("--out", help="metrics JSON (default RUN/metrics.json)")
    e.add_argument("--device", default="cpu")
    e.add_argument("--multi-person", action="store_true", default=None, help="decode several people with PAFs")
    e.set_defaults(func=_cmd_evaluate)

    pr = sub.add_parser("predict", help="draw a trained pose network's predictions on a folder of images")
    pr.add_argument("--posenet", required=True)
    pr.add_argument("--images", required=True)
    pr.add_argument("--out", required=True)
    pr.add_argument("--device", default="cpu")
    pr.set_defaults(func=_cmd_predict)

    from .augment.experiment import ExperimentConfig

    x = sub.add_parser("experiment", help="measure whether GAN augmentation reduces overfitting")
    x.add_argument("name", choices=["overfitting"], help="the experiment")
    x.add_argument("--config", help="YAML file of ExperimentConfig options")
    add_config_args(x, ExperimentConfig)
    x.set_defaults(func=_cmd_experiment)

    from .spade.generate import GenerateConfig

    gn = sub.add_parser("generate", help="write a synthetic COCO dataset rendered from perturbed poses")
    gn.add_argument("--config", help="YAML file of GenerateConfig options")
    gn.add_argument("--merge", action="store_true", help="merge the shard annotation files in --out and exit")
    add_config_args(gn, GenerateConfig)
    gn.set_defaults(func=_cmd_generate)

    d = sub.add_parser("demo", help="the main job of `make demo`")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--quick", action="store_true", help="tiny sizes, for tests")
    d.set_defaults(func=_cmd_demo)
    return p


def main(argv: "list[str] | None" = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        args.func(args)
    except PosesynthError as e:
        if args.debug:
            raise
        print(f"posesynth {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
