"""``posesynth evaluate-generator``: how well a trained generator of any arch draws the target
person on held-out frames.

Every frame of ``data`` is fitted to the generator's size as the run fitted its training
frames (``letterbox`` by default: borders stay black), and the generator renders it from the
frame's own skeleton (keypoints in those pixels).  Scores, per frame then averaged:

- ``psnr`` (dB) and ``ssim`` of the render against the real frame, on the 0-255 scale over
  the whole image (:mod:`posesynth.imagemetrics`);
- pose consistency: a detector (``mediapipe``, ``keypointrcnn``, ``posenet:RUN``, or a
  :class:`~posesynth.posenet.detectors.Detector`) finds the person in each render, and its
  keypoints are scored against the input skeleton (:func:`~posesynth.posenet.detectors.pose_consistency`:
  PCK@0.2 of the torso size, mean pixel error in the generator's pixels, OKS AP/AR, the
  share of renders where someone was detected).  With ``reference`` the same detector is
  scored on the real frames too: the consistency a perfect render would get, given the
  detector's own disagreement with the labels.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..datasets.formats import open_dataset
from ..datasets.posemaps import PoseMapSpec
from ..datasets.torch_dataset import PoseMapDataset, tensor_to_image
from ..errors import PosesynthError
from ..imagemetrics import psnr, ssim
from ..io import atomic_write_text
from ..posenet.detectors import make_detector, pose_consistency
from .load import check_compatible, load_render

__all__ = ["evaluate_generator", "format_generator_metrics"]

log = logging.getLogger(__name__)


def _stats(v: np.ndarray) -> tuple[float, float]:
    """Mean and SD, NaN (an empty region) left out; a PSNR of ``inf`` (an exact render) is kept."""
    v = np.asarray(v, np.float64)
    v = v[~np.isnan(v)]
    if not len(v):
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std()) if np.isfinite(v).all() else float("nan")


def evaluate_generator(run: "str | Path", data: "str | Path", detector: "str | Any" = "mediapipe",
                       device: str = "cpu", batch_size: int = 8, out: "str | Path | None" = None,
                       reference: bool = True, grid: "str | Path | None" = None, weights: "str | None" = None,
                       image_dir: "str | None" = None, on_error: str = "skip", out_of_frame: str = "unlabel",
                       progress: bool = True) -> dict[str, Any]:
    """Score the generator of ``run`` on the frames of ``data`` (see the module docstring).

    Args:
        detector: a detector name (``none``: no pose consistency), or a detector object.
        out: the results JSON (default ``RUN/generator_metrics.json``).
        reference: also score the detector on the real frames (``pose_real``).
        grid: optionally a PNG of every frame: stick figure | render | real.
        weights: Keypoint R-CNN weights file.

    Returns:
        ``{"run", "arch", "data", "frames", "size", "psnr", "psnr_sd", "ssim", "ssim_sd",
        "detector", "pose" (pose_consistency's dict, or None), "pose_real", "per_frame"}``.
    """

    render, layout, meta = load_render(run, device)
    size = tuple(int(v) for v in meta["generator"]["size"])
    src = open_dataset(data, layout=layout, on_error=on_error, image_dir=image_dir, out_of_frame=out_of_frame)
    check_compatible(layout, src.layout, str(run), str(data))
    if len(src) == 0:
        raise PosesynthError(f"{data}: no frames to evaluate on")
    spec = PoseMapSpec.from_dict(meta["posemaps"])
    ds = PoseMapDataset(src, size, None, stride=spec.stride, spec=spec, with_maps=False,
                        fit=meta.get("fit", "letterbox"))
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size)
    renders, reals, kps, p_all, s_all = [], [], [], [], []
    with tqdm(total=len(ds), desc=f"evaluate-generator ({meta['arch']})", unit="frame", disable=not progress,
              dynamic_ncols=True) as bar:
        for batch in loader:
            kp, real = batch["keypoints"], batch["image"]
            with torch.no_grad():
                fake = render(kp.to(device), size).float().cpu()
            p_all.append(psnr(fake, real))
            s_all.append(ssim(fake, real))
            renders.append(tensor_to_image(fake))
            reals.append(tensor_to_image(real))
            kps.append(kp.numpy())
            bar.update(len(kp))
    renders_a, reals_a, kps_a = np.concatenate(renders), np.concatenate(reals), np.concatenate(kps)
    p_a, s_a = np.concatenate(p_all), np.concatenate(s_all)
    pose = pose_real = None
    det_name = detector if isinstance(detector, str) else getattr(detector, "name", type(detector).__name__)
    if not (isinstance(detector, str) and detector == "none"):
        pose = _consistency(detector, renders_a, kps_a, layout, device, weights)
        if reference:
            pose_real = _consistency(detector, reals_a, kps_a, layout, device, weights)
    (pm, psd), (sm, ssd) = _stats(p_a), _stats(s_a)
    res = {"run": str(run), "arch": meta["arch"], "data": str(data), "frames": int(len(p_a)), "size": list(size),
           "psnr": pm, "psnr_sd": psd, "ssim": sm, "ssim_sd": ssd, "detector": det_name, "pose": pose,
           "pose_real": pose_real, "per_frame": {"psnr": [round(float(v), 4) for v in p_a],
                                                 "ssim": [round(float(v), 5) for v in s_a]}}
    out = Path(out) if out else Path(run) / "generator_metrics.json"
    atomic_write_text(out, json.dumps(res, indent=1, allow_nan=True))
    res["out"] = str(out)
    if grid:
        _write_grid(grid, renders_a, reals_a, kps_a, layout, size)
    return res


def _consistency(detector, images, kps, layout, device, weights) -> dict[str, float]:
    det = make_detector(detector, device=device, weights=weights, max_people=1, every=0) \
        if isinstance(detector, str) else detector
    try:
        return {k: float(v) for k, v in pose_consistency(det, list(images), kps, layout).items()}
    finally:
        if isinstance(detector, str):
            det.close()


def _write_grid(path: "str | Path", renders: np.ndarray, reals: np.ndarray, kps: np.ndarray, layout,
                size: tuple[int, int]) -> None:
    import cv2

    from ..datasets.stickfigure import stick_figure_images

    sticks = stick_figure_images(kps, layout, size)
    cols = [np.concatenate([s, r, q], 0) for s, r, q in zip(sticks, renders, reals)]   # each (3H, W, 3)
    img = np.concatenate(cols, 1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR)):
        raise PosesynthError(f"{path}: cannot write the image there (use a .png or .jpg name)")


def format_generator_metrics(res: dict[str, Any]) -> str:
    """One line per figure, for the terminal."""
    lines = [f"{res['arch']} on {res['frames']} frames of {res['data']} at {res['size'][0]}x{res['size'][1]}: "
             f"PSNR {res['psnr']:.2f} ± {res['psnr_sd']:.2f} dB, SSIM {res['ssim']:.4f} ± {res['ssim_sd']:.4f}"]
    for key, what in (("pose", "renders"), ("pose_real", "real frames")):
        p = res.get(key)
        if p:
            lines.append(f"  pose consistency ({res['detector']}) on the {what}: PCK@0.2 {p.get('PCK@0.2', float('nan')):.3f}, "
                         f"mean error {p.get('mean_px_error', float('nan')):.2f} px, OKS AP {p.get('AP', float('nan')):.3f}, "
                         f"detected {p.get('detected', float('nan')):.2f}")
    lines.append(f"  written: {res['out']}")
    return "\n".join(lines)
