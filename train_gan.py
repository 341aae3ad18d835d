"""Thin entry point: ``python train_gan.py ARGS`` is ``posesynth train-gan ARGS``."""
import sys

from posesynth.cli import main

if __name__ == "__main__":
    sys.exit(main(["train-gan", *sys.argv[1:]]))
