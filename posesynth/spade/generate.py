"""Offline synthetic dataset generation (``posesynth generate``).

Every source image ``i`` of ``--data`` gives ``--per-image K`` new images: copy ``k`` uses
keypoints perturbed with a generator seeded by ``(seed, i, k)``, the source's own masks, and
the trained generator's rendering.  Item ``i * K + k`` becomes image id ``i * K + k + 1``, so
the dataset does not depend on batching, sharding or interruptions.

- Resumable: the annotation file is rewritten atomically every ``flush_every`` images and at
  the end, always valid on disk; a rerun of the same command skips what it lists.
- Sharded: ``--shard i/N`` (or each torchrun rank) takes items with ``id % N == i`` and
  writes ``annotations.shard-i-of-N.json``; :func:`merge_shards` (``--merge``) writes one
  ``annotations.json``.
- Fast: spectral norm folded, batched, channels-last, inference mode; data preparation and
  image encoding run in threads beside the generator; fp16/bf16 on GPU, int8 on CPU.
"""
from __future__ import annotations

import errno
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..augment.perturb import MODES, PerturbConfig, perturb_keypoints
from ..datasets.coco import CocoWriter, encode_image
from ..datasets.formats import open_dataset
from ..datasets.posemaps import PoseMapSpec, render_pose_maps
from ..datasets.sample import Sample
from ..datasets.transforms import Resize
from ..errors import ConfigError, PosesynthError
from ..io import atomic_write_json
from .inference import PRECISIONS, optimize_generator
from .render import check_compatible
from .trainer import load_generator

__all__ = ["GenerateConfig", "generate_dataset", "merge_shards", "parse_shard"]


@dataclass
class GenerateConfig:
    gan: str = ""
    data: str = ""
    out: str = ""
    per_image: int = 1
    augment: str = field(default="arms-high", metadata={"help": "|".join(MODES)})
    seed: int = 0
    shard: str = field(default="", metadata={"help": "i/N: this process's share (default: torchrun rank/world)"})
    batch_size: int = 8
    device: str = "cpu"
    precision: str = field(default="fp32", metadata={"help": "|".join(PRECISIONS)})
    compile: bool = field(default=False, metadata={
        "help": "torch.compile the generator (Inductor, frozen weights): ~1.3-1.5x on CPU after ~40 s of compiling"})
    threads: int = 2
    flush_every: int = 64
    limit: int = field(default=0, metadata={"help": "use only the first N source images (0: all)"})
    min_torso: float = 20.0


def parse_shard(text: str) -> tuple[int, int]:
    if not text:
        rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
        return rank, world
    try:
        i, n = (int(v) for v in text.split("/"))
        assert 0 <= i < n
    except (ValueError, AssertionError):
        raise ConfigError(f"--shard must be i/N with 0 <= i < N, not {text!r}") from None
    return i, n


def _ann_name(i: int, n: int) -> str:
    return "annotations.json" if n == 1 else f"annotations.shard-{i}-of-{n}.json"


def generate_dataset(c: GenerateConfig, progress: bool = True, stop_after: "int | None" = None) -> Path:
    """Write (or complete) the generated dataset; returns its annotation file.

    ``stop_after`` stops after that many new images (tests use it to simulate an interruption).
    """
    if c.per_image < 1:
        raise ConfigError("--per-image must be at least 1")
    if c.augment not in MODES:
        raise ConfigError(f"--augment must be one of {MODES}")
    shard, nshards = parse_shard(c.shard)
    gen, layout, meta = load_generator(c.gan, c.device)
    src = open_dataset(c.data, layout=layout, on_error="skip")
    check_compatible(layout, src.layout, c.gan, c.data)  # before any work
    size = tuple(meta["generator"]["size"])
    spec = PoseMapSpec(meta["config"].get("sigma", 7.0), meta["config"].get("paf_width", 8.0))
    pcfg = PerturbConfig(c.augment, c.min_torso)
    out = Path(c.out)
    try:
        writer = CocoWriter(out, layout, ".jpg", info={
            "description": "posesynth generated dataset", "gan": str(c.gan), "source": str(c.data),
            "perturbation": c.augment, "seed": c.seed, "per_image": c.per_image}, ann_name=_ann_name(shard, nshards),
            resume=True)
    except OSError as e:
        raise PosesynthError(f"{out}: cannot write there ({e.strerror})") from None
    n_src = min(len(src), c.limit) if c.limit else len(src)
    done = {int(im["id"]) for im in writer.images}
    todo = [t for t in range(n_src * c.per_image) if t % nshards == shard and t + 1 not in done]

    def prepare(item: int) -> tuple[int, Sample, np.ndarray]:
        i, k = divmod(item, c.per_image)
        s = Resize(size)(src[i])
        rng = np.random.default_rng([c.seed, i, k])
        kp = perturb_keypoints(s.keypoints, layout, size, rng, pcfg)
        maps = render_pose_maps(kp, layout, size, size, s.masks, spec)
        prov = {"source_image_id": int(s.image_id), "source_file": s.file_name, "perturbation": c.augment,
                "seed": int(c.seed), "copy": int(k)}
        return item, Sample(s.image, kp, s.masks, meta={"provenance": prov}), maps

    calib = None
    if c.precision == "int8":
        calib = [torch.from_numpy(np.stack([prepare(t)[2] for t in range(min(4, n_src * c.per_image))]))]
    model = optimize_generator(gen, c.device, c.precision, calib, compile=c.compile and c.precision != "int8")
    dtype = next(model.parameters()).dtype if c.precision in ("fp16", "bf16") else torch.float32
    batches = [todo[j:j + c.batch_size] for j in range(0, len(todo), c.batch_size)]
    bar = tqdm(total=len(todo), desc=f"generate{'' if nshards == 1 else f' {shard}/{nshards}'}", unit="img",
               disable=not progress, dynamic_ncols=True)
    written = 0
    t0 = time.perf_counter()
    pool = ThreadPoolExecutor(max(c.threads, 1))

    def write(sample: Sample, item: int) -> dict[str, Any]:
        return writer.write_files(sample, item + 1, encode_image(sample.image, ".jpg", 95))

    try:
        nxt = [pool.submit(prepare, t) for t in batches[0]] if batches else []
        for bi in range(len(batches)):
            ready = [f.result() for f in nxt]
            nxt = [pool.submit(prepare, t) for t in batches[bi + 1]] if bi + 1 < len(batches) else []
            maps = torch.from_numpy(np.stack([r[2] for r in ready])).to(c.device, dtype)
            with torch.inference_mode():
                fake = model(maps.contiguous(memory_format=torch.channels_last)).float().clamp(-1, 1)
            imgs = ((fake + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
            samples = [Sample(img, s.keypoints, s.masks, meta=s.meta) for img, (_, s, _) in zip(imgs, ready)]
            entries = [pool.submit(write, s, item) for s, (item, _, _) in zip(samples, ready)]
            for s, (item, _, _), fut in zip(samples, ready, entries):
                writer.add(s, item + 1, entry=fut.result())
                written += 1
            bar.update(len(ready))
            bar.set_postfix(img_s=f"{written / (time.perf_counter() - t0):.1f}")
            if written % c.flush_every < len(ready):
                _flush(writer)
            if stop_after is not None and written >= stop_after:
                break
        _flush(writer)
    except OSError as e:
        try:
            _flush(writer)
        except OSError:
            pass
        kind = "the disk is full" if e.errno == errno.ENOSPC else f"cannot write ({e.strerror})"
        raise PosesynthError(f"{out}: {kind}; stopped after {written} new images. {writer.ann_name} lists "
                             f"{len(writer.images)} complete images and is valid; rerun the same command to "
                             "continue") from None
    finally:
        pool.shutdown(wait=True)
        bar.close()
    if progress:
        dt = time.perf_counter() - t0
        print(f"generated {written} images in {dt:.1f} s ({written / max(dt, 1e-9):.1f} images/s); "
              f"{len(writer.images)} in {out / writer.ann_name}")
    if nshards > 1 and os.environ.get("WORLD_SIZE") and not c.shard:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("gloo")
        dist.barrier()
        if shard == 0:
            merge_shards(out, progress)
        dist.barrier()
        return out / "annotations.json"
    return out / writer.ann_name


def _flush(writer: CocoWriter) -> None:
    order = np.argsort([im["id"] for im in writer.images])
    writer.images = [writer.images[i] for i in order]
    writer.close()


def merge_shards(out: "str | Path", progress: bool = True) -> Path:
    """Combine ``annotations.shard-*-of-N.json`` into one ``annotations.json`` (all shards needed)."""
    out = Path(out)
    files = sorted(out.glob("annotations.shard-*-of-*.json"))
    if not files:
        raise PosesynthError(f"{out}: no shard annotation files to merge")
    ns = {int(f.stem.rsplit("-", 1)[1]) for f in files}
    if len(ns) != 1 or len(files) != ns.pop():
        raise PosesynthError(f"{out}: found {len(files)} shard files of differing or incomplete sets: "
                             + ", ".join(f.name for f in files))
    parts = [json.loads(f.read_text()) for f in files]
    images = sorted((im for p in parts for im in p["images"]), key=lambda im: im["id"])
    anns = sorted((a for p in parts for a in p["annotations"]), key=lambda a: (a["image_id"], a["id"]))
    for j, a in enumerate(anns):
        a["id"] = j + 1
    merged = {"info": parts[0]["info"], "licenses": [], "categories": parts[0]["categories"], "images": images,
              "annotations": anns}
    atomic_write_json(out / "annotations.json", merged)
    if progress:
        print(f"merged {len(files)} shards: {len(images)} images in {out / 'annotations.json'}")
    return out / "annotations.json"
