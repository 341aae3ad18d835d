"""The nearest-neighbour baseline: no training, the output for a pose is the training frame
whose normalised skeleton is closest (a KD-tree over skeleton vectors, scipy's ``cKDTree``).

Skeleton vector (:func:`skeleton_features`), for the first person of a frame: for each
keypoint ``(x, y)`` normalised by the image size to [-1, 1] (``x / (W - 1) * 2 - 1``), times
its visibility flag, then the flag times ``missing_weight``.  Euclidean distance between
two vectors is the root of the summed squared coordinate differences of the keypoints both
have, plus ``missing_weight**2`` (and the other's squared coordinates) for each keypoint only
one has, so a frame that lacks a joint the query has is rarely chosen.  The camera of a
target-person video is fixed, so coordinates are compared where they are in the frame; the
transfer's global pose normalisation brings a source skeleton into that frame first.

Saved as safetensors (frames uint8 ``(N, H, W, 3)``, features) + JSON through
:mod:`posesynth.checkpoint`; the tree is rebuilt on load (it takes milliseconds).  Nothing is
pickled.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.spatial import cKDTree
from torch import nn

from ..checkpoint import load_checkpoint, save_checkpoint
from ..datasets.layouts import KeypointLayout
from ..errors import PosesynthError

__all__ = ["NearestNeighbourGenerator", "skeleton_features", "load_nearest"]

KIND = "posesynth-nearest"


def skeleton_features(keypoints: "torch.Tensor | np.ndarray", size: tuple[int, int],
                      missing_weight: float = 2.0) -> np.ndarray:
    """``(N, P, K, 3)`` (or ``(N, K, 3)``) keypoints in pixels of ``(H, W)`` images -> ``(N, 3K)``
    float64 skeleton vectors of the first person (see the module docstring)."""
    kp = keypoints.detach().cpu().numpy() if torch.is_tensor(keypoints) else np.asarray(keypoints)
    kp = kp.astype(np.float64)
    if kp.ndim == 4:
        kp = kp[:, 0] if kp.shape[1] else np.zeros((kp.shape[0], kp.shape[2], 3))
    if kp.ndim != 3 or kp.shape[-1] != 3:
        raise ValueError(f"keypoints must be (N, P, K, 3) or (N, K, 3), got {kp.shape}")
    h, w = size
    vis = (kp[..., 2] > 0).astype(np.float64)
    xy = (kp[..., :2] / np.array([max(w - 1, 1), max(h - 1, 1)]) * 2 - 1) * vis[..., None]
    return np.concatenate([xy.reshape(len(kp), -1), vis * missing_weight], 1)


class NearestNeighbourGenerator(nn.Module):
    """Retrieval "generator": keypoints -> the closest training frame.

    Args:
        frames: ``(N, H, W, 3)`` uint8 RGB training frames at the output size.
        keypoints: ``(N, P, K, 3)`` their keypoints in pixels of those frames.
        layout: the keypoints' layout (recorded; queries must use it).
        missing_weight: see :func:`skeleton_features`.

    ``forward(keypoints (B, P, K, 3) in output pixels)`` returns ``(B, 3, H, W)`` in [-1, 1];
    :meth:`query` also gives the indices and distances.  Frames and features are buffers, so
    ``.to(device)`` moves them and the output is on that device.
    """

    def __init__(self, frames: "np.ndarray | torch.Tensor", keypoints: "np.ndarray | torch.Tensor",
                 layout: KeypointLayout, missing_weight: float = 2.0) -> None:
        super().__init__()
        frames_t = torch.as_tensor(np.asarray(frames) if not torch.is_tensor(frames) else frames)
        if frames_t.dim() != 4 or frames_t.shape[-1] != 3 or frames_t.dtype != torch.uint8:
            raise ValueError(f"frames must be (N, H, W, 3) uint8, got {tuple(frames_t.shape)} {frames_t.dtype}")
        if len(frames_t) == 0:
            raise PosesynthError("nearest neighbour: no training frame")
        self.layout = layout
        self.size = tuple(frames_t.shape[1:3])
        self.missing_weight = float(missing_weight)
        feats = skeleton_features(keypoints, self.size, self.missing_weight)
        if len(feats) != len(frames_t):
            raise ValueError(f"{len(frames_t)} frames but {len(feats)} skeletons")
        if feats.shape[1] != 3 * layout.num_keypoints:
            raise ValueError(f"skeletons have {feats.shape[1] // 3} keypoints, layout '{layout.name}' has "
                             f"{layout.num_keypoints}")
        self.register_buffer("frames", frames_t.contiguous())
        self.register_buffer("features", torch.from_numpy(feats))
        self._tree: "cKDTree | None" = None

    @classmethod
    def from_source(cls, source: Any, size: tuple[int, int], missing_weight: float = 2.0,
                    progress: bool = False) -> "NearestNeighbourGenerator":
        """Fit on every sample of a :class:`~posesynth.datasets.formats.KeypointSource`, each
        resized to ``size`` ``(H, W)`` as the trainer resizes them (no augmentation)."""
        from tqdm import tqdm

        from ..datasets.transforms import Resize

        frames, kps = [], []
        for i in tqdm(range(len(source)), desc="nearest: index frames", disable=not progress):
            s = Resize(tuple(size))(source[i])
            frames.append(s.image)
            kps.append(s.keypoints)
        k = source.layout.num_keypoints
        kp = np.zeros((len(kps), max([len(x) for x in kps] + [1]), k, 3), np.float32)
        for i, x in enumerate(kps):
            kp[i, :len(x)] = x
        return cls(np.stack(frames), kp, source.layout, missing_weight)

    @property
    def tree(self) -> cKDTree:
        if self._tree is None:
            self._tree = cKDTree(self.features.cpu().numpy())
        return self._tree

    def query(self, keypoints: "torch.Tensor | np.ndarray") -> tuple[np.ndarray, np.ndarray]:
        """Indices ``(B,)`` of the closest training frames and their distances ``(B,)``."""
        d, i = self.tree.query(skeleton_features(keypoints, self.size, self.missing_weight), k=1)
        return np.asarray(i, np.int64), np.asarray(d, np.float64)

    def forward(self, keypoints: "torch.Tensor | np.ndarray") -> torch.Tensor:
        idx, _ = self.query(keypoints)
        img = self.frames[torch.from_numpy(idx).to(self.frames.device)]
        return img.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)

    # ---- saving --------------------------------------------------------------------------
    def save(self, path: "str | Path", extra: "dict[str, Any] | None" = None) -> None:
        """``path.safetensors`` + ``path.json`` (atomic; the JSON is written last)."""
        meta = {"kind": KIND, "layout": self.layout.to_dict(), "size": list(self.size),
                "missing_weight": self.missing_weight, "frames": len(self.frames), **(extra or {})}
        save_checkpoint(path, {"frames": self.frames.cpu().contiguous(), "features": self.features.cpu()}, meta)

    @classmethod
    def load(cls, path: "str | Path", device: "str | torch.device" = "cpu") -> "NearestNeighbourGenerator":
        """A model :meth:`save` wrote."""
        tensors, meta = load_checkpoint(path)
        if meta.get("kind") != KIND:
            raise PosesynthError(f"{path}: not a posesynth nearest-neighbour model (kind {meta.get('kind')!r})")
        return cls._build(tensors.get("frames"), tensors.get("features"), meta, meta, str(path)).to(device)

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], meta: dict[str, Any], source: str = "checkpoint",
                     prefix: str = "G") -> "NearestNeighbourGenerator":
        """The model inside a ``train-gan --arch nearest`` checkpoint: tensors ``G.frames`` and
        ``G.features``, ``meta["generator"]`` (``size``, ``missing_weight``) and ``meta["layout"]``."""
        return cls._build(tensors.get(f"{prefix}.frames"), tensors.get(f"{prefix}.features"), meta["generator"],
                          meta, source)

    @classmethod
    def _build(cls, frames: "torch.Tensor | None", feats: "torch.Tensor | None", settings: dict[str, Any],
               meta: dict[str, Any], source: str) -> "NearestNeighbourGenerator":
        layout = KeypointLayout.from_dict(meta["layout"], source=source)
        obj = cls.__new__(cls)
        nn.Module.__init__(obj)
        obj.layout = layout
        obj.size = tuple(settings["size"])
        obj.missing_weight = float(settings["missing_weight"])
        if frames is None or feats is None or tuple(frames.shape[1:3]) != obj.size or len(frames) != len(feats):
            raise PosesynthError(f"{source}: damaged nearest-neighbour model (frames/features missing or inconsistent)")
        obj.register_buffer("frames", frames)
        obj.register_buffer("features", feats)
        obj._tree = None
        return obj


def load_nearest(path: "str | Path", device: "str | torch.device" = "cpu") -> NearestNeighbourGenerator:
    """:meth:`NearestNeighbourGenerator.load`."""
    return NearestNeighbourGenerator.load(path, device)
