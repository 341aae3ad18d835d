"""Offline synthetic dataset generation (``posesynth generate``): perturbation and rendering
applied to a whole dataset.

Every source image ``i`` of ``--data`` gives ``--per-image K`` new images: copy ``k`` uses
keypoints perturbed with a generator seeded by ``(seed, i, k)`` and the chosen renderer.
Item ``i * K + k`` becomes image id ``i * K + k + 1``, so the dataset does not depend on
batching, sharding or interruptions.

- Renderers: ``warp`` (no GAN needed; at the source images' own resolution) or ``gan`` (the
  run's mode; at the generator's resolution, the sources letterboxed to it).
- Resumable: each finished image is appended as one line to a journal,
  ``annotations.journal.jsonl`` (:class:`~posesynth.datasets.coco.CocoJournalWriter`; fsynced
  every ``flush_every`` images), so recording an image costs the same at the millionth as at
  the first; the annotation file is written atomically from the journal at the end (and when
  the run stops on an error), and the journal is then removed.  A rerun of the same command
  (after a crash or kill -9, too) continues from the journal, dropping a line cut short, and
  skips what it lists; the result is byte for byte the uninterrupted run's.  Temporary files
  of an interrupted write are removed at the start.  The settings are recorded in
  ``generate.json``; a rerun with other settings into the same output is refused, naming the
  difference.
- Sharded: ``--shard i/N`` (or each torchrun rank) takes items with ``id % N == i`` and
  writes ``annotations.shard-i-of-N.json`` (journal ``annotations.shard-i-of-N.journal.jsonl``);
  :func:`merge_shards` (``--merge``) writes one ``annotations.json`` once every shard has
  finished.
- Fast: for the GAN, spectral norm folded, batched, channels-last, inference mode, fp16/bf16
  on GPU, int8 on CPU, optional ``torch.compile``; data preparation and image encoding run in
  threads beside the renderer.
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

from ..datasets.coco import CocoJournalWriter, encode_image
from ..datasets.formats import data_options, open_dataset
from ..datasets.geometry import RegionSpec
from ..datasets.posemaps import PoseMapSpec, render_pose_maps_torch
from ..datasets.sample import Sample
from ..datasets.torch_dataset import image_to_tensor, tensor_to_image
from ..datasets.transforms import Fit
from ..errors import ConfigError, PosesynthError
from ..io import atomic_write_json
from ..runs import resolve_device
from .perturb import MODES, PerturbConfig, Perturber, check_mode
from .renderers import GANRenderer, Renderer, WarpRenderer

__all__ = ["GenerateConfig", "generate_dataset", "merge_shards", "parse_shard"]


@dataclass
class GenerateConfig:
    data: str = field(default="", metadata={"help": "source dataset"})
    out: str = field(default="", metadata={"help": "output dataset folder"})
    renderer: str = field(default="", metadata={"help": "warp|gan (default: gan when --gan is given, else warp)"})
    image_dir: str = field(default="", metadata={"help": "folder the images' file_name values are relative to "
                                                         "(default: see the README's resolution order)"})
    on_error: str = field(default="skip", metadata={"help": "skip (drop bad images, counted and reported) | raise"})
    out_of_frame: str = field(default="unlabel", metadata={"help": "labelled points outside the image: "
                                                                   "unlabel|clip|skip-person|skip-image"})
    gan: str = field(default="", metadata={"help": "train-gan run (for --renderer gan)"})
    per_image: int = 1
    augment: str = field(default="arms-angle", metadata={"help": "|".join(MODES) + "|poses:FILE|learned:RUN"})
    rare: bool = field(default=False, metadata={"help": "draw new arm angles where the source data is thin"})
    plausibility: str = field(default="", metadata={"help": "train-motion run whose critic filters perturbations"})
    seed: int = 0
    shard: str = field(default="", metadata={"help": "i/N: this process's share (default: torchrun rank/world)"})
    batch_size: int = 8
    device: str = field(default="auto", metadata={"help": "auto|cpu|cuda:N"})
    precision: str = field(default="fp32", metadata={"help": "gan renderer: fp32|fp16|bf16|int8"})
    compile: bool = field(default=False, metadata={
        "help": "gan renderer: torch.compile the generator (Inductor, frozen weights): ~1.3-1.5x on CPU after ~40 s"})
    threads: int = 2
    flush_every: int = field(default=64, metadata={"help": "fsync the journal every N images (a crash of the "
                                                           "process loses nothing either way)"})
    limit: int = field(default=0, metadata={"help": "use only the first N source images (0: all)"})
    min_torso: float = 20.0

    def validate(self) -> None:
        """Refuse impossible numbers (one line, exit 2) before anything is read or written."""
        from ..config import check_numbers

        check_numbers(self, {"per_image": ">=1", "seed": ">=0", "batch_size": ">=1", "threads": ">=1",
                             "flush_every": ">=1", "limit": ">=0", "min_torso": ">=0"})

    def settings(self) -> dict[str, Any]:
        """What determines the output (recorded in ``generate.json``; a rerun must match)."""
        return {"data": str(Path(self.data).resolve()) if self.data else "", "renderer": self.renderer_name,
                "gan": str(Path(self.gan).resolve()) if self.gan else "", "per_image": self.per_image,
                "augment": self.augment, "rare": self.rare, "plausibility": self.plausibility, "seed": self.seed,
                "limit": self.limit, "min_torso": self.min_torso, "precision": self.precision}

    @property
    def renderer_name(self) -> str:
        return self.renderer or ("gan" if self.gan else "warp")


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


def _check_settings(out: Path, settings: dict[str, Any]) -> None:
    """Refuse to continue into an output made with other settings; record them otherwise."""
    path = out / "generate.json"
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except (json.JSONDecodeError, OSError):
            old = None
        if old is not None:
            diff = [f"{k}: {old.get(k)!r} there, {v!r} now" for k, v in settings.items() if old.get(k) != v]
            if diff:
                raise PosesynthError(f"{out} holds a dataset generated with other settings ({'; '.join(diff)}); "
                                     "choose another --out, or rerun with the same settings to continue it")
            return
    elif any(out.glob("annotations*.json")):
        raise PosesynthError(f"{out} already holds a dataset not made by this command; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, settings, indent=1)


def _gan_renderer(c: GenerateConfig, layout, device: torch.device, calib_maps) -> GANRenderer:
    from ..spade.inference import optimize_generator
    from ..spade.load import check_compatible, load_generator

    gen, gan_layout, meta = load_generator(c.gan, device)
    check_compatible(gan_layout, layout, c.gan, c.data)
    model = optimize_generator(gen, device, c.precision, calib_maps(gen, meta) if c.precision == "int8" else None,
                               compile=c.compile and c.precision != "int8")
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(c.precision, torch.float32)
    r = GANRenderer(model, meta.get("mode", "full"), gan_layout, PoseMapSpec.from_dict(meta["posemaps"]),
                    tuple(meta["generator"]["size"]), device, run=str(c.gan), dtype=dtype,
                    region=RegionSpec.from_meta(meta))
    return r


def generate_dataset(c: GenerateConfig, progress: bool = True, stop_after: "int | None" = None) -> Path:
    """Write (or complete) the generated dataset; returns its annotation file.

    ``stop_after`` stops after that many new images (tests use it to simulate an interruption).
    """
    c.validate()
    check_mode(c.augment)
    if c.renderer_name not in ("warp", "gan"):
        raise ConfigError(f"--renderer must be warp or gan, not {c.renderer_name!r}")
    if c.renderer_name == "gan" and not c.gan:
        raise ConfigError("--renderer gan needs --gan RUN")
    shard, nshards = parse_shard(c.shard)
    device = resolve_device(c.device, shared_ok=True)   # no collectives: ranks may share a GPU
    src = open_dataset(c.data, **data_options(c))
    layout = src.layout
    kps = [e.keypoints for e in getattr(src, "entries", [])] if c.rare else None
    perturber = Perturber(PerturbConfig(c.augment, c.min_torso, rare=c.rare), layout, kps, c.plausibility, str(device))
    n_src = min(len(src), c.limit) if c.limit else len(src)

    size: "tuple[int, int] | None" = None

    def prepare(item: int) -> tuple[int, Sample, np.ndarray]:
        i, k = divmod(item, c.per_image)
        s = src[i]
        if size is not None:
            s = Fit(size)(s)
        rng = np.random.default_rng([c.seed, i, k])
        kp = perturber(s.keypoints, s.image.shape[:2], rng, s.file_name)
        prov = {"source_image_id": int(s.image_id), "source_file": s.file_name, "perturbation": c.augment,
                "renderer": c.renderer_name, "seed": int(c.seed), "copy": int(k)}
        return item, Sample(s.image, s.keypoints, s.masks, meta={"provenance": prov}), kp

    renderer: Renderer
    if c.renderer_name == "gan":
        def calib(gen, meta):
            gs = tuple(meta["generator"]["size"])
            spec = PoseMapSpec.from_dict(meta["posemaps"])
            items = [Fit(gs)(src[i]) for i in range(min(4, n_src))]
            kp = np.stack([_pad(s.keypoints, max(x.num_people for x in items), layout.num_keypoints) for s in items])
            maps = render_pose_maps_torch(torch.from_numpy(kp), layout, gs, gs,
                                          torch.from_numpy(np.stack([s.masks for s in items])).float(), spec)
            if meta.get("mode") == "inpaint":
                imgs = torch.stack([image_to_tensor(s.image) for s in items])
                maps = torch.cat([maps, imgs, torch.zeros_like(imgs[:, :1])], 1)
            return [maps]

        renderer = _gan_renderer(c, layout, device, calib)
        size = renderer.size
    else:
        renderer = WarpRenderer(layout)
    out = Path(c.out)
    ann_name = _ann_name(shard, nshards)
    # temporary files an interrupted write of this shard's own files left (other shards may be
    # writing theirs now); generate.json is written by every shard, so only a single run cleans its
    _remove_own_temps(out, [ann_name] + (["generate.json"] if nshards == 1 else []))
    try:
        _check_settings(out, c.settings())
        writer = CocoJournalWriter(out, layout, ".jpg", info={
            "description": "posesynth generated dataset", **c.settings()}, ann_name=ann_name, resume=True)
    except OSError as e:
        raise PosesynthError(f"{out}: cannot write there ({e.strerror})") from None
    done = {int(im["id"]) for im in writer.images}
    todo = [t for t in range(n_src * c.per_image) if t % nshards == shard and t + 1 not in done]
    # the warp works at each source's own size (one image per call); the GAN in batches
    bs = c.batch_size if c.renderer_name == "gan" else 1
    batches = [todo[j:j + bs] for j in range(0, len(todo), bs)]
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
            p = max(max(s.num_people for _, s, _ in ready), 1)
            old = np.stack([_pad(s.keypoints, p, layout.num_keypoints) for _, s, _ in ready])
            new = np.stack([_pad(kp, p, layout.num_keypoints) for _, _, kp in ready])
            imgs = torch.stack([image_to_tensor(s.image) for _, s, _ in ready]).to(device)
            masks = torch.from_numpy(np.stack([s.masks for _, s, _ in ready])).float().to(device)
            with torch.inference_mode():
                rd = renderer(imgs, masks, old, new)
            pics = tensor_to_image(rd.images)
            new_masks = (rd.masks > 0.5).to(torch.uint8).cpu().numpy()
            samples = [Sample(pic, kp, m, meta=s.meta) for pic, m, (_, s, kp) in zip(pics, new_masks, ready)]
            entries = [pool.submit(write, s, item) for s, (item, _, _) in zip(samples, ready)]
            for s, (item, _, _), fut in zip(samples, ready, entries):
                writer.add(s, item + 1, entry=fut.result())
                written += 1
            bar.update(len(ready))
            bar.set_postfix(img_s=f"{written / (time.perf_counter() - t0):.1f}")
            if written % c.flush_every < len(ready):
                writer.sync()
            if stop_after is not None and written >= stop_after:
                break
        # stopped early (stop_after, for tests): the annotation file lists what is done, the journal stays
        writer.close(finished=written == len(todo))
    except OSError as e:
        try:
            writer.close(finished=False)
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
        print(f"generated {written} images in {dt:.1f} s ({written / max(dt, 1e-9):.1f} images/s, "
              f"{c.renderer_name} renderer); {len(writer.images)} in {out / writer.ann_name}")
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


def _pad(kp: np.ndarray, p: int, k: int) -> np.ndarray:
    out = np.zeros((p, k, 3), np.float32)
    out[: len(kp)] = kp[:p]
    return out


def _remove_own_temps(out: Path, names: list[str]) -> None:
    """Remove ``.NAME.*.tmp`` files an interrupted atomic write of ``names`` left in ``out``."""
    if not out.is_dir():
        return
    for name in names:
        for p in out.glob(f".{name}.*.tmp"):
            p.unlink(missing_ok=True)


def merge_shards(out: "str | Path", progress: bool = True) -> Path:
    """Combine ``annotations.shard-*-of-N.json`` into one ``annotations.json`` (all shards needed)."""
    out = Path(out)
    _remove_own_temps(out, ["annotations.json"])
    unfinished = sorted(out.glob("annotations.shard-*-of-*.journal.jsonl"))
    if unfinished:
        raise PosesynthError(f"{out}: shard(s) not finished ({', '.join(f.name for f in unfinished)}): rerun "
                             "them with the same command to complete them, then --merge")
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
