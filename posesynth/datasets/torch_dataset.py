"""A ``torch.utils.data.Dataset`` that turns samples into network-ready tensors.

Each item is a dict:

- ``image``: ``(3, H, W)`` float32 in [-1, 1] (``x / 127.5 - 1``; never ImageNet-normalised;
  models that need ImageNet statistics convert inside).
- ``maps``: ``(C, H, W)`` float32 pose maps at the input resolution (GAN conditioning).
- ``heatmaps``: ``(K, h, w)``, ``pafs``: ``(2L, h, w)`` at ``1/stride`` resolution (pose targets).
- ``masks``: ``(M, H, W)`` float32 in [0, 1] at full resolution.
- ``keypoints``: ``(max_people, K, 3)`` in input pixels, padded with ``v = 0``.
- ``index``: the sample's index.

Augmentation runs in the worker with a generator seeded from ``(seed, epoch, index)``, so
an epoch is reproducible whatever the number of workers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .formats import KeypointSource
from .posemaps import PoseMapSpec, render_pafs, render_heatmaps, render_pose_maps, resize_masks
from .sample import Sample
from .transforms import Resize, Transform

__all__ = ["PoseMapDataset", "EpochBatchSampler", "sample_to_tensors", "image_to_tensor", "tensor_to_image"]


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """``(H, W, 3)`` uint8 RGB -> ``(3, H, W)`` float32 in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(127.5).sub_(1.0)


def tensor_to_image(t: torch.Tensor) -> np.ndarray:
    """``(3, H, W)`` in [-1, 1] -> ``(H, W, 3)`` uint8 RGB."""
    x = ((t.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(1, 2, 0).numpy()


def sample_to_tensors(sample: Sample, layout, stride: int = 4, spec: PoseMapSpec = PoseMapSpec(),
                      max_people: int = 4, with_maps: bool = True) -> dict[str, Any]:
    """Tensors for one (already resized) sample; see the module docstring for the keys."""
    h, w = sample.image.shape[:2]
    small = (h // stride, w // stride)
    kp = sample.keypoints[:max_people]
    padded = np.zeros((max_people, layout.num_keypoints, 3), np.float32)
    padded[: len(kp)] = kp
    out = {
        "image": image_to_tensor(sample.image),
        "heatmaps": torch.from_numpy(render_heatmaps(kp, (h, w), small, spec.sigma)),
        "pafs": torch.from_numpy(render_pafs(kp, layout.limbs, (h, w), small, spec.paf_width)),
        "masks": torch.from_numpy(resize_masks(sample.masks, (h, w))),
        "keypoints": torch.from_numpy(padded),
    }
    if with_maps:
        out["maps"] = torch.from_numpy(render_pose_maps(kp, layout, (h, w), (h, w), sample.masks, spec))
    return out


@dataclass
class PoseMapDataset(torch.utils.data.Dataset):
    """Samples of ``source`` augmented by ``transform`` and resized to ``size``.

    Attributes:
        source: any :class:`~posesynth.datasets.formats.KeypointSource`.
        size: ``(H, W)`` network input size (multiples of 32 for the models).
        transform: optional augmentation (a :class:`~posesynth.datasets.transforms.Compose`),
            applied before the final resize.
        stride: output stride of the pose targets (4: 1/4 resolution).
        spec: heatmap sigma and PAF width in input pixels of the network input.
        with_maps: also render full-resolution pose maps (the GAN's conditioning).
    """

    source: KeypointSource
    size: tuple[int, int] = (384, 384)
    transform: "Transform | None" = None
    stride: int = 4
    spec: PoseMapSpec = PoseMapSpec()
    max_people: int = 4
    with_maps: bool = True
    seed: int = 0
    epoch: int = 0

    def __len__(self) -> int:
        return len(self.source)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, index: "int | tuple[int, int]") -> dict[str, Any]:
        """``index``, or ``(index, epoch)`` from a sampler that tracks epochs itself."""
        index, epoch = index if isinstance(index, tuple) else (index, self.epoch)
        sample = self.source[index]
        rng = np.random.default_rng([self.seed, epoch, index])
        if self.transform is not None:
            sample = self.transform(sample, rng)
        sample = Resize(tuple(self.size))(sample)
        out = sample_to_tensors(sample, self.source.layout, self.stride, self.spec, self.max_people, self.with_maps)
        out["index"] = index
        return out


class EpochBatchSampler(torch.utils.data.Sampler):
    """Batches of ``(index, epoch)`` from a permutation seeded by ``(seed, epoch)``.

    Batch ``s`` is a pure function of ``(seed, s)``, so a run resumed at step ``start``
    sees exactly the batches an uninterrupted run would.  Incomplete final batches are
    dropped (a dataset smaller than a batch is cycled).  Under data parallelism each rank
    takes every ``world``-th item of a global batch of ``batch_size * world``.
    """

    def __init__(self, n: int, batch_size: int, seed: int = 0, start: int = 0, steps: "int | None" = None,
                 rank: int = 0, world: int = 1) -> None:
        if n < 1:
            raise ValueError("empty dataset")
        self.n, self.bs, self.seed, self.start, self.steps = n, batch_size, seed, start, steps
        self.rank, self.world = rank, world
        self.global_bs = batch_size * world
        self.per_epoch = max(n // self.global_bs, 1)

    def batch(self, step: int) -> list[tuple[int, int]]:
        epoch, j = divmod(step, self.per_epoch)
        perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        if self.n < self.global_bs:
            perm = np.resize(perm, self.global_bs)
        items = perm[j * self.global_bs:(j + 1) * self.global_bs][self.rank::self.world]
        return [(int(i), epoch) for i in items]

    def __iter__(self):
        step = self.start
        while self.steps is None or step < self.steps:
            yield self.batch(step)
            step += 1

    def __len__(self) -> int:
        return (self.steps - self.start) if self.steps is not None else 2**31
