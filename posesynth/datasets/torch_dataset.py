"""A ``torch.utils.data.Dataset`` that turns samples into network-ready tensors.

Each item is a dict:

- ``image``: ``(3, H, W)`` float32 in [-1, 1] (``x / 127.5 - 1``; never ImageNet-normalised;
  models that need ImageNet statistics convert inside).
- ``maps``: ``(C, H, W)`` float32 pose maps at the input resolution (GAN conditioning).
- ``heatmaps``: ``(K, h, w)``, ``pafs``: ``(2L, h, w)`` at ``1/stride`` resolution (pose targets).
- ``masks``: ``(M, H, W)`` float32 in [0, 1] at full resolution.
- ``mask_valid``: ``(M,)`` float32, 1 where the mask is labelled (0: the dataset has no such
  mask for this image, e.g. real frames without a seatbelt mask; the loss ignores it).
- ``keypoints``: ``(max_people, K, 3)`` in input pixels, padded with ``v = 0``.
- ``index``: the sample's index.
- with ``with_original=True`` (evaluation): ``orig_keypoints`` ``(max_people, K, 3)`` in the
  source image's pixels, ``to_input`` ``(2, 3)`` the matrix from the source image to the
  network input, ``orig_size`` ``(2,)`` its ``(H, W)``, so predictions can be scored in
  the image's own frame, and ``orig_areas`` ``(max_people,)`` float64 each person's annotation
  ``area`` in source pixels^2 (``Sample.meta["areas"]``; NaN where unknown, and for padding).

Augmentation runs in the worker with a generator seeded from ``(seed, epoch, index)``, so
an epoch is reproducible whatever the number of workers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .formats import KeypointSource, source_annotations
from .posemaps import PoseMapSpec, render_pafs, render_heatmaps, render_pose_maps, resize_masks
from .sample import Sample, mask_labelled, pad_people
from .transforms import Fit, Transform

__all__ = ["PoseMapDataset", "EpochBatchSampler", "sample_to_tensors", "image_to_tensor", "tensor_to_image",
           "max_people_of", "person_areas"]


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """``(H, W, 3)`` uint8 RGB -> ``(3, H, W)`` float32 in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(127.5).sub_(1.0)


def tensor_to_image(t: torch.Tensor) -> np.ndarray:
    """``(3, H, W)`` or a batch ``(B, 3, H, W)`` in [-1, 1] -> ``(H, W, 3)`` / ``(B, H, W, 3)``
    uint8 RGB (quantised on the tensor's device, then copied)."""
    x = ((t.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.movedim(-3, -1).cpu().numpy()


def max_people_of(source, cap: int = 16) -> int:
    """The most people any image of ``source`` holds (read from the annotations when the source
    keeps them, else from the samples), at least 1 and at most ``cap`` (with a warning)."""
    import logging

    counts = [len(k) for k in source_annotations(source)]
    n = max(counts, default=1)
    if n > cap:
        logging.getLogger(__name__).warning("an image holds %d people; only the first %d of each image are used "
                                            "(raise --max-people to keep more)", n, cap)
        n = cap
    return max(n, 1)


def person_areas(sample: Sample, max_people: int) -> np.ndarray:
    """``(max_people,)`` float64: ``sample.meta["areas"]`` (one per person, pixels^2 of the
    sample's image), NaN where a person has none and for padding."""
    out = np.full(max_people, np.nan)
    areas = sample.meta.get("areas")
    if areas is not None and len(areas) == sample.num_people:
        a = np.array([np.nan if v is None else v for v in areas], np.float64)[:max_people]
        out[:len(a)] = a
    return out


def sample_to_tensors(sample: Sample, layout, stride: int = 4, spec: PoseMapSpec = PoseMapSpec(),
                      max_people: int = 4, with_maps: bool = True) -> dict[str, Any]:
    """Tensors for one (already resized) sample; see the module docstring for the keys."""
    h, w = sample.image.shape[:2]
    small = (h // stride, w // stride)
    kp = sample.keypoints[:max_people]
    padded = pad_people(kp, max_people, layout.num_keypoints)
    out = {
        "image": image_to_tensor(sample.image),
        "heatmaps": torch.from_numpy(render_heatmaps(kp, (h, w), small, spec.sigma)),
        "pafs": torch.from_numpy(render_pafs(kp, layout.limbs, (h, w), small, spec.paf_width)),
        "masks": torch.from_numpy(resize_masks(sample.masks, (h, w))),
        "mask_valid": torch.tensor(mask_labelled(sample), dtype=torch.float32),
        "keypoints": torch.from_numpy(padded),
    }
    if with_maps:
        out["maps"] = torch.from_numpy(render_pose_maps(kp, layout, (h, w), (h, w), sample.masks, spec))
    return out


@dataclass
class PoseMapDataset(torch.utils.data.Dataset):
    """Samples of ``source`` augmented by ``transform`` and brought to ``size``.

    Attributes:
        source: any :class:`~posesynth.datasets.formats.KeypointSource`.
        size: ``(H, W)`` network input size (multiples of 32 for the models).
        transform: optional augmentation (a :class:`~posesynth.datasets.transforms.Compose`),
            applied before the final fit.
        stride: output stride of the pose targets (4: 1/4 resolution).
        spec: heatmap sigma and PAF width in input pixels of the network input.
        max_people: people kept per image (the rest are dropped from the labels).
        with_maps: also render full-resolution pose maps (the GAN's conditioning).
        fit: ``letterbox`` (keep the aspect ratio) or ``stretch``.
        with_original: also return the source-frame keypoints and the fitting matrix.
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
    fit: str = "letterbox"
    with_original: bool = False

    def __len__(self) -> int:
        return len(self.source)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, index: "int | tuple[int, int]") -> dict[str, Any]:
        """``index``, or ``(index, epoch)`` from a sampler that tracks epochs itself."""
        index, epoch = index if isinstance(index, tuple) else (index, self.epoch)
        original = self.source[index]
        rng = np.random.default_rng([self.seed, epoch, index])
        sample = self.transform(original, rng) if self.transform is not None else original
        sample = Fit(tuple(self.size), self.fit)(sample)
        out = sample_to_tensors(sample, self.source.layout, self.stride, self.spec, self.max_people, self.with_maps)
        out["index"] = index
        if self.with_original:
            if self.transform is not None:
                raise ValueError("with_original is for evaluation datasets (no random transform)")
            out["orig_keypoints"] = torch.from_numpy(pad_people(original.keypoints, self.max_people,
                                                                self.source.layout.num_keypoints))
            out["to_input"] = torch.from_numpy(np.asarray(sample.meta["to_input"], np.float64))
            out["orig_size"] = torch.tensor(original.image.shape[:2])
            out["orig_areas"] = torch.from_numpy(person_areas(original, self.max_people))
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
