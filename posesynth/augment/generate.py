"""Offline synthetic dataset generation (``posesynth generate``): perturbation and rendering
applied to a whole dataset.

Every source image ``i`` of ``--data`` gives ``--per-image K`` new images: copy ``k`` uses
keypoints perturbed with a generator seeded by ``(seed, i, k)`` and the chosen renderer.
Item ``i * K + k`` becomes image id ``i * K + k + 1``, so the dataset does not depend on
batching, sharding or interruptions.

- Renderers: ``warp`` (no GAN needed; at the source images' own resolution), ``refine`` (the
  warp corrected on crops by a refine-mode run; also at the images' own resolution) or ``gan``
  (the run's mode; at the generator's resolution, the sources letterboxed to it).
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
- ``--with-source``: each source image (as it is) and its annotations are written too, as images
  ``N * K + i + 1`` after the renders, with provenance ``renderer: "source"``, so the output
  trains directly on real + rendered images.
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
from ..datasets.formats import DataOptions, data_options, open_dataset, source_annotations
from ..datasets.plate import background_option
from ..datasets.posemaps import PoseMapSpec, render_pose_maps_torch
from ..datasets.sample import Sample, label_meta, pad_people
from ..datasets.torch_dataset import image_to_tensor, tensor_to_image
from ..datasets.transforms import Fit
from ..errors import ConfigError, PosesynthError
from ..io import atomic_write_json, record_settings
from ..runs import resolve_device
from ..spade.inference import optimize_generator
from .perturb import MODES, PerturbConfig, Perturber, check_mode
from .renderers import BANK_BODY_HELP, GANRenderer, Renderer, load_gan_renderer, load_limb_bank, make_renderer
from .training import renderer_name

__all__ = ["GenerateConfig", "generate_dataset", "merge_shards", "parse_shard"]


@dataclass
class GenerateConfig:
    data: str = field(default="", metadata={
        "help": "source dataset (several as A,B:WEIGHT) (required, here or in --config)"})
    out: str = field(default="", metadata={
        "help": "output dataset folder (images/, masks/, annotations.json, generate.json) (required, here or in "
                "--config)"})
    renderer: str = field(default="", metadata={"help": "warp|gan|refine (default: gan when --gan is given, else "
                                                        "warp)"})
    data_options: DataOptions = field(default_factory=DataOptions, metadata={"help": "how the data is read"})
    gan: str = field(default="", metadata={"help": "train-gan run for --renderer gan or refine (unset: none)"})
    per_image: int = field(default=1, metadata={"help": "new images rendered from each source image"})
    background: str = field(default="", metadata={
        "help": "warp or refine, a static camera: a clip of it or a PNG of the empty scene; the area an arm "
                "leaves is filled from what the camera saw there (unset: inpainting, but a refine run uses its own; "
                "none: no plate at all)"})
    limb_bank: str = field(default="", metadata={
        "help": "warp or refine: frames of the same person and camera with keypoints; an arm is moved from the "
                "frame whose arm lies nearest its new pose, when nearer than the source's own, and the body an old arm "
                "hid from frames whose body lies where the source's does (unset: the source's)"})
    bank_body: bool = field(default=True, metadata={"help": BANK_BODY_HELP})
    augment: str = field(default="arms-angle", metadata={"help": "|".join(MODES) + "|poses:FILE|learned:RUN"})
    rare: bool = field(default=False, metadata={"help": "draw new arm angles where the source data is thin"})
    plausibility: str = field(default="", metadata={
        "help": "train-motion run whose critic filters perturbations (unset: none)"})
    seed: int = field(default=0, metadata={
        "help": "seed of the perturbations: copy k of source image i uses (seed, i, k)"})
    shard: str = field(default="", metadata={
        "help": "i/N: this process's share of the images, those with id % N == i (unset: the torchrun rank and "
                "world size, else all)"})
    batch_size: int = field(default=8, metadata={
        "help": "images rendered per batch by the GAN, and by the warp (those of one size at once, on up to one "
                "thread per core, at most 32 megapixels a call); refine renders one at a time"})
    device: str = field(default="auto", metadata={"help": "auto|cpu|cuda:N"})
    precision: str = field(default="fp32", metadata={"help": "gan renderer: fp32|fp16|bf16|int8"})
    compile: bool = field(default=False, metadata={
        "help": "gan renderer: torch.compile the generator (Inductor, frozen weights): ~1.3-1.5x on CPU after ~40 s"})
    threads: int = field(default=2, metadata={
        "help": "threads that read and prepare source images and encode the outputs beside the renderer"})
    flush_every: int = field(default=64, metadata={"help": "fsync the journal every N images (a crash of the "
                                                           "process loses nothing either way)"})
    limit: int = field(default=0, metadata={"help": "use only the first N source images (0: all)"})
    min_torso: float = field(default=20.0, metadata={
        "help": "people whose torso (shoulders to hips) is shorter than this many pixels keep their pose"})
    with_source: bool = field(default=False, metadata={
        "help": "also write each source image and its annotations into the output (ids after the renders'), so "
                "it trains directly on real + rendered images"})

    def validate(self) -> None:
        """Refuse impossible numbers (one line, exit 2) before anything is read or written."""
        from ..config import check_numbers

        check_numbers(self, {"per_image": ">=1", "seed": ">=0", "batch_size": ">=1", "threads": ">=1",
                             "flush_every": ">=1", "limit": ">=0", "min_torso": ">=0"})

    def settings(self) -> dict[str, Any]:
        """What determines the output (recorded in ``generate.json``; a rerun must match)."""
        from ..datasets.multi import resolve_data_spec

        return {"data": resolve_data_spec(self.data), "renderer": self.renderer_name,
                "gan": str(Path(self.gan).resolve()) if self.gan else "", "per_image": self.per_image,
                "augment": self.augment, "rare": self.rare, "plausibility": self.plausibility, "seed": self.seed,
                "limit": self.limit, "min_torso": self.min_torso, "precision": self.precision,
                **({"with_source": True} if self.with_source else {}),   # absent when off: older outputs resume
                **({"background": self.background if self.background.lower() == "none" else
                    str(Path(self.background).resolve())} if self.background else {}),
                **({"limb_bank": resolve_data_spec(self.limb_bank)} if self.limb_bank else {}),
                **({"bank_body": False} if self.limb_bank and not self.bank_body else {})}

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
    record_settings(out, "generate.json", settings, "a dataset generated", "annotations*.json")


#: the most pixels the warp renders in one call (its float copies of a batch of 12-megapixel
#: photos would take several GB)
WARP_CALL_PIXELS = 32_000_000


def _same_size_groups(ready: list, max_pixels: int = WARP_CALL_PIXELS) -> list[list[int]]:
    """Indices into ``ready`` (``(item, sample, keypoints)`` triples) grouped by image size and
    mask count (what one renderer call stacks), each group at most ``max_pixels`` pixels (at
    least one image), in order of first appearance."""
    groups: dict[tuple, list[list[int]]] = {}
    order: list[list[int]] = []
    for k, r in enumerate(ready):
        key = (r[1].image.shape, r[1].masks.shape)
        px = r[1].image.shape[0] * r[1].image.shape[1]
        g = groups.setdefault(key, [])
        if not g or (len(g[-1]) + 1) * px > max_pixels:
            g.append([])
            order.append(g[-1])
        g[-1].append(k)
    return order


def _gan_renderer(c: GenerateConfig, layout, device: torch.device, calib_maps) -> GANRenderer:
    """The run's generator as a renderer; a spade generator folded, in ``c.precision`` and
    optionally compiled (:func:`~posesynth.spade.inference.optimize_generator`)."""
    def optimize(gen, meta):
        model = optimize_generator(gen, device, c.precision, calib_maps(gen, meta) if c.precision == "int8" else None,
                                   compile=c.compile and c.precision != "int8")
        return model, {"fp16": torch.float16, "bf16": torch.bfloat16}.get(c.precision, torch.float32)

    r = load_gan_renderer(c.gan, layout, str(device), optimize)
    if r.arch != "spade" and (c.precision != "fp32" or c.compile):
        raise ConfigError(f"--precision {c.precision}{' and --compile' if c.compile else ''} apply to spade generators; "
                          f"{c.gan} is a {r.arch} run: use --precision fp32")
    return r


def generate_dataset(c: GenerateConfig, progress: bool = True, stop_after: "int | None" = None) -> Path:
    """Write (or complete) the generated dataset; returns its annotation file.

    ``stop_after`` stops at the end of the batch in which that many new images are written
    (tests use it to simulate an interruption).
    """
    c.validate()
    check_mode(c.augment)
    renderer_name(c.renderer, c.gan)   # one line for a renderer that is unknown, or lacks or ignores --gan
    if c.background and c.renderer_name == "gan":
        raise ConfigError("--background (a static camera's background plate) is for the warp and refine renderers; "
                          "the gan renderer draws the region itself")
    if c.limb_bank and c.renderer_name == "gan":
        raise ConfigError("--limb-bank (frames whose arms the warp moves) is for the warp and refine renderers; the "
                          "gan renderer draws the arms itself")
    shard, nshards = parse_shard(c.shard)
    device = resolve_device(c.device, shared_ok=True)   # no collectives: ranks may share a GPU
    src = open_dataset(c.data, **data_options(c))
    layout = src.layout
    kps = source_annotations(src) if c.rare else None
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
        meta = {"provenance": prov, **label_meta(s)}
        return item, Sample(s.image, s.keypoints, s.masks, meta=meta), kp

    renderer: Renderer
    if c.renderer_name == "gan":
        def calib(gen, meta):
            gs = tuple(meta["generator"]["size"])
            spec = PoseMapSpec.from_dict(meta["posemaps"])
            items = [Fit(gs)(src[i]) for i in range(min(4, n_src))]
            kp = pad_people([s.keypoints for s in items], num_keypoints=layout.num_keypoints)
            maps = render_pose_maps_torch(torch.from_numpy(kp), layout, gs, gs,
                                          torch.from_numpy(np.stack([s.masks for s in items])).float(), spec)
            if meta.get("mode") == "inpaint":
                imgs = torch.stack([image_to_tensor(s.image) for s in items])
                maps = torch.cat([maps, imgs, torch.zeros_like(imgs[:, :1])], 1)
            return [maps]

        renderer = _gan_renderer(c, layout, device, calib)
        size = renderer.size
    else:   # warp, or the warp corrected by a refine-mode run: at each image's own size
        if c.precision != "fp32" or c.compile:
            raise ConfigError(f"--precision {c.precision}{' and --compile' if c.compile else ''} apply to the gan "
                              f"renderer's spade generator; the {c.renderer_name} renderer runs in fp32")
        plate = background_option(c.background, **data_options(c))
        renderer = make_renderer(c.renderer_name, layout, c.gan, str(device), plate,
                                 load_limb_bank(c.limb_bank, layout, c.bank_body, **data_options(c)))
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
    n_rendered = n_src * c.per_image
    todo = [t for t in range(n_rendered) if t % nshards == shard and t + 1 not in done]
    sources = [t for t in range(n_rendered, n_rendered + n_src) if t % nshards == shard and t + 1 not in done] \
        if c.with_source else []
    # the GAN renders in batches at its size; the warp in batches of images of one size (each
    # image rendered on its own thread, the same bytes as one at a time); refine one at a time
    bs = c.batch_size if c.renderer_name in ("gan", "warp") else 1
    batches = [todo[j:j + bs] for j in range(0, len(todo), bs)]
    bar = tqdm(total=len(todo) + len(sources), desc=f"generate{'' if nshards == 1 else f' {shard}/{nshards}'}",
               unit="img", disable=not progress, dynamic_ncols=True)
    written = 0
    t0 = time.perf_counter()
    pool = ThreadPoolExecutor(max(c.threads, 1))

    def render(ready: list) -> list[Sample]:
        """``(item, source sample, new keypoints)`` of one size -> the rendered samples."""
        p = max(max(s.num_people for _, s, _ in ready), 1)
        old = pad_people([s.keypoints for _, s, _ in ready], p, layout.num_keypoints)
        new = pad_people([kp for _, _, kp in ready], p, layout.num_keypoints)
        imgs = torch.stack([image_to_tensor(s.image) for _, s, _ in ready]).to(device)
        masks = torch.from_numpy(np.stack([s.masks for _, s, _ in ready])).float().to(device)
        with torch.inference_mode():
            rd = renderer(imgs, masks, old, new)
        pics = tensor_to_image(rd.images)
        new_masks = (rd.masks > 0.5).to(torch.uint8).cpu().numpy()
        drawn = rd.keypoints if rd.keypoints is not None else new   # the poses the renderer drew
        return [Sample(pic, kp[: s.num_people], m, meta=s.meta)
                for pic, m, kp, (_, s, _) in zip(pics, new_masks, drawn, ready)]

    def write(sample: Sample, item: int) -> dict[str, Any]:
        return writer.write_files(sample, item + 1, encode_image(sample.image, ".jpg", 95))

    try:
        nxt = [pool.submit(prepare, t) for t in batches[0]] if batches else []
        for bi in range(len(batches)):
            ready = [f.result() for f in nxt]
            nxt = [pool.submit(prepare, t) for t in batches[bi + 1]] if bi + 1 < len(batches) else []
            samples: list = [None] * len(ready)
            for group in _same_size_groups(ready):   # rendered by size, written in order
                for k, x in zip(group, render([ready[k] for k in group])):
                    samples[k] = x
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
        for t in sources if stop_after is None or written < stop_after else []:
            _write_source(writer, src, t - n_rendered, t + 1)
            written += 1
            bar.update(1)
            if written % c.flush_every == 0:
                writer.sync()
            if stop_after is not None and written >= stop_after:
                break
        # stopped early (stop_after, for tests): the annotation file lists what is done, the journal stays
        writer.close(finished=written == len(todo) + len(sources))
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


def _write_source(writer: CocoJournalWriter, src: Any, i: int, image_id: int) -> None:
    """Source image ``i`` as it is (its JPEG copied byte for byte; other files encoded as JPEG),
    with its keypoints and masks, as image ``image_id`` of the generated dataset."""
    s = src[i]
    path = src.image_path(i) if hasattr(src, "image_path") else None
    data = path.read_bytes() if path is not None and path.suffix.lower() in (".jpg", ".jpeg") else None
    prov = {"source_image_id": int(s.image_id) if isinstance(s.image_id, (int, np.integer)) else s.image_id,
            "source_file": s.file_name, "perturbation": "none", "renderer": "source"}
    meta = {"provenance": prov, **label_meta(s)}
    sample = Sample(s.image, s.keypoints, s.masks, meta=meta)
    entry = writer.write_files(sample, image_id, data if data is not None else encode_image(s.image, ".jpg", 95))
    writer.add(sample, image_id, entry=entry)


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
