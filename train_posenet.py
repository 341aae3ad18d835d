"""Thin entry point: ``python train_posenet.py ARGS`` is ``posesynth train-posenet ARGS``
(also under ``torchrun --nproc_per_node=N train_posenet.py ARGS``)."""
import sys

from posesynth.cli import main

if __name__ == "__main__":
    sys.exit(main(["train-posenet", *sys.argv[1:]]))
