"""Loading a trained pose network from a ``train-posenet`` run, and running it: decoding
keypoints from its maps."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import load_checkpoint, load_module
from ..datasets.layouts import KeypointLayout
from ..datasets.posemaps import PoseMapSpec
from ..errors import PosesynthError
from .decode import decode_people, decode_single
from .model import PoseNet, PoseNetConfig, mask_probabilities

__all__ = ["load_posenet", "predict_batch"]


def load_posenet(run_dir: "str | Path", device: "str | torch.device" = "cpu", checkpoint: str = "best"
                 ) -> tuple[PoseNet, KeypointLayout, dict[str, Any]]:
    """A trained pose network (eval mode, frozen), its layout and metadata (``meta["posemaps"]``
    is the run's :class:`~posesynth.datasets.posemaps.PoseMapSpec`; ``meta["checkpoint_path"]``
    the checkpoint read).

    ``checkpoint``: ``"best"`` (the run's best by its validation metric; ``latest`` when the run
    kept none), ``"latest"``, or a checkpoint file (``NAME.safetensors``, ``NAME.json`` or
    ``NAME``: the pair written by ``train-posenet``)."""
    run = Path(run_dir)
    if not run.exists():
        raise PosesynthError(f"{run}: no such pose-network run folder")
    if checkpoint in ("best", "latest"):
        path = run / "checkpoints" / checkpoint
        if not path.with_suffix(".json").exists() and checkpoint == "best":
            path = run / "checkpoints" / "latest"
    else:
        given = Path(checkpoint)
        path = given.with_suffix("") if given.suffix in (".safetensors", ".json") else given
        if not path.with_suffix(".json").exists() and not path.with_suffix(".safetensors").exists():
            raise PosesynthError(f"{given}: no checkpoint there (give best, latest, or a NAME.safetensors file "
                                 "with its NAME.json beside it)")
    tensors, meta = load_checkpoint(path)
    meta["checkpoint_path"] = str(path)
    if meta.get("kind") != "posesynth-posenet":
        raise PosesynthError(f"{path}: not a posesynth pose-network checkpoint")
    mc = dict(meta["model"])
    mc["pretrained"] = "none"  # the checkpoint holds all weights
    model = PoseNet(PoseNetConfig(**mc))
    load_module(model, tensors, "model", str(path))
    model.to(device).eval().requires_grad_(False)
    meta["posemaps"] = PoseMapSpec.from_meta(meta).to_dict()
    return model, KeypointLayout.from_dict(meta["layout"], source=str(path)), meta


def predict_batch(model: torch.nn.Module, images: torch.Tensor, layout: KeypointLayout, multi_person: bool,
                  threshold: float = 0.1) -> tuple[list[np.ndarray], list[np.ndarray], "np.ndarray | None", tuple]:
    """Run the network and decode: per image ``(P, K, 3)`` keypoints in input pixels, person scores,
    mask probabilities ``(B, M, H, W)`` (float32 NumPy, the sigmoid of the network's logits) and the raw
    outputs ``(heatmaps, pafs, mask logits)``."""
    hm, paf, mask = model(images)
    size = tuple(images.shape[-2:])
    hm_np, paf_np = hm.float().cpu().numpy(), paf.float().cpu().numpy()
    kps, scores = [], []
    for i in range(hm_np.shape[0]):
        if multi_person:
            kp, sc = decode_people(hm_np[i], paf_np[i], layout, size, threshold)
        else:
            kp, s = decode_single(hm_np[i], size, threshold)
            sc = np.array([float(s[s > threshold].mean()) if (s > threshold).any() else 0.0], np.float32)
        kps.append(kp)
        scores.append(sc)
    prob = mask_probabilities(mask)
    return kps, scores, (prob.cpu().numpy() if prob is not None else None), (hm, paf, mask)
