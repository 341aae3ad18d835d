"""Rendering a dataset's poses with a trained generator (``posesynth render``)."""
from __future__ import annotations

import html
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from ..datasets.formats import open_dataset
from ..datasets.posemaps import PoseMapSpec, render_pose_maps
from ..datasets.torch_dataset import tensor_to_image
from ..datasets.transforms import Resize
from ..datasets.visualize import maps_to_rgb
from ..errors import PosesynthError
from ..io import atomic_write_text
from .trainer import load_generator

__all__ = ["render_dataset", "check_compatible"]


def check_compatible(gan_layout, data_layout, gan_path: str, data_path: str) -> None:
    """A clear error when a GAN run cannot render a dataset's poses."""
    if gan_layout.num_channels != data_layout.num_channels or gan_layout.keypoints != data_layout.keypoints:
        raise PosesynthError(
            f"{gan_path} was trained on layout '{gan_layout.name}' ({gan_layout.num_channels} channels) but "
            f"{data_path} is '{data_layout.name}' ({data_layout.num_channels} channels)")


@torch.no_grad()
def render_dataset(gan_run: "str | Path", data: "str | Path", out: "str | Path", num: int = 16,
                   device: str = "cpu", batch_size: int = 4, progress: bool = True) -> Path:
    """Render the poses of the first ``num`` samples of ``data``; writes ``out/NNNNNN.png``
    (maps | generated | real) and ``out/index.html``.  Returns the HTML path."""
    gen, layout, meta = load_generator(gan_run, device)
    src = open_dataset(data, layout=layout, on_error="skip")
    check_compatible(layout, src.layout, str(gan_run), str(data))
    size = tuple(meta["generator"]["size"])
    spec = PoseMapSpec(meta["config"].get("sigma", 7.0), meta["config"].get("paf_width", 8.0))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n = min(num, len(src))
    names = []
    for start in tqdm(range(0, n, batch_size), desc="render", disable=not progress):
        samples = [Resize(size)(src[i]) for i in range(start, min(start + batch_size, n))]
        maps = np.stack([render_pose_maps(s.keypoints, layout, size, size, s.masks, spec) for s in samples])
        fake = gen(torch.from_numpy(maps).to(device).contiguous(memory_format=torch.channels_last))
        for i, s in enumerate(samples):
            row = np.concatenate([maps_to_rgb(maps[i], layout), tensor_to_image(fake[i]), s.image], 1)
            name = f"{start + i:06d}.png"
            cv2.imwrite(str(out / name), cv2.cvtColor(row, cv2.COLOR_RGB2BGR))
            names.append(name)
    body = "".join(f"<div><img src='{html.escape(n)}'></div>" for n in names)
    page = out / "index.html"
    atomic_write_text(page, f"<!doctype html><meta charset='utf-8'><title>render</title><p>pose maps | generated |"
                            f" real ({html.escape(str(gan_run))})</p>{body}")
    if progress:
        print(f"rendered {n} poses to {out} (open {page})")
    return page
