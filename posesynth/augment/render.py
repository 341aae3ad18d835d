"""Looking at and measuring renders: ``posesynth render`` and ``posesynth render-quality``.

``render`` draws perturbed copies of a dataset's first images with a renderer and writes
rows of source | perturbed pose maps | render, with an ``index.html``.

``render-quality`` renders perturbed copies of a dataset with one or more renderers and
reports, per renderer:

- on synthetic driver scenes (images that record their scene), a paired ground truth: the
  same scene redrawn with the perturbed keypoints.  PSNR and SSIM inside M (the region around
  the moved limbs' old and new positions, the same for every renderer) and over the whole
  image.  The sources are redrawn losslessly from their scene too, so the figures measure
  the renderer and not the dataset's JPEG compression;
- on any data, pose consistency: a judge's PCK@0.2 on the renders against the perturbed
  keypoints, beside the same judge's PCK on the real sources (and, with a ground truth, on the
  true images of the perturbed poses).  The judge is a pose network (``--judge``) trained on
  other images than the generator;
- a picture (rows: source | perturbed pose maps | each renderer | ground truth), a JSON of
  every figure, and a last printed line with the headline figures.
"""
from __future__ import annotations

import html
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import cv2
import numpy as np
import torch
from tqdm import tqdm

from ..config import check_numbers
from ..datasets.formats import DataOptions, data_options, open_dataset, source_annotations
from ..datasets.plate import background_option
from ..datasets.geometry import limb_region
from ..datasets.posemaps import PoseMapSpec, render_pose_maps
from ..datasets.sample import Sample, pad_people, time_order
from ..datasets.synthetic import SceneSpec, redraw_scene
from ..datasets.torch_dataset import image_to_tensor, tensor_to_image
from ..datasets.transforms import Fit, apply_affine, fit_matrix, invert_affine
from ..datasets.visualize import maps_to_rgb
from ..errors import ConfigError, PosesynthError
from ..imagemetrics import psnr, ssim
from ..io import atomic_write_json, atomic_write_text
from ..posenet.detectors import make_detector, pose_consistency
from ..runs import resolve_device
from .perturb import PerturbConfig, Perturber, check_mode
from .renderers import BANK_BODY_HELP, GAN_RENDERERS, Renderer, load_limb_bank, make_renderer
from .training import renderer_name

log = logging.getLogger(__name__)

__all__ = ["render_dataset", "QualityConfig", "render_quality", "render_pairs", "find_pairs", "judge_pck"]


def _renderers(names: list[str], gans: list[str], layout, device: str, background: Any = None,
               bank: Any = None) -> dict[str, Renderer]:
    out: dict[str, Renderer] = {}
    gi = 0
    for name in names:
        if name in GAN_RENDERERS:
            if gi >= len(gans):
                raise ConfigError(f"each {' and '.join(GAN_RENDERERS)} renderer needs a run: --gan RUN (comma-separated "
                                  "for several, in the order of --renderer)")
            r = make_renderer(name, layout, gans[gi], device, background, bank if name == "refine" else None)
            label = r.name if r.name not in out else f"{r.name}-{gi}"
            out[label] = r
            gi += 1
        else:
            out[name] = make_renderer(name, layout, device=device, background=background, bank=bank)
    if gi < len(gans):
        raise ConfigError(f"{len(gans)} --gan runs for {gi} gan or refine renderers: give one run per such renderer")
    return out


_PAGE_CSS = """
body { font-family: sans-serif; margin: 1em; }
figure { margin: 0 0 1.5em 0; }
figure img { max-width: 100%; height: auto; display: block; }
figcaption { font-size: 0.9em; color: #333; margin-top: 0.3em; }
#kp:checked ~ .rows img.plain, #kp:not(:checked) ~ .rows img.kp { display: none; }
"""


def _overlay(img: np.ndarray, kp: np.ndarray, layout) -> np.ndarray:
    """``img`` ``(H, W, 3)`` with the skeleton of ``kp`` ``(P, K, 3)`` drawn at full size."""
    from ..datasets.visualize import draw_sample

    return draw_sample(Sample(img, kp, None), layout, size=img.shape[0], pafs=False, masks=False)


def _moved(old: np.ndarray, new: np.ndarray, layout) -> str:
    """``"right_elbow 23 px, right_wrist 41 px"``: the labelled keypoints the perturbation moved."""
    d = np.linalg.norm(np.asarray(new)[..., :2] - np.asarray(old)[..., :2], axis=-1)
    moved = (d > 0.5) & (np.asarray(old)[..., 2] > 0)
    parts = [f"{'' if len(old) == 1 else f'person {p + 1} '}{layout.keypoints[k]} {d[p, k]:.0f} px"
             for p, k in zip(*np.nonzero(moved))]
    return ", ".join(parts) if parts else "no arm moved (no labelled arm that keeps the joint limits when moved)"


@torch.no_grad()
def render_dataset(data: "str | Path", out: "str | Path", renderer: str = "", gan: str = "", num: int = 16,
                   augment: str = "arms-angle", seed: int = 0, device: str = "auto", size: int = 0,
                   progress: bool = True, **data_opts: Any) -> Path:
    """Render perturbed poses of the first ``num`` samples of ``data``; returns the HTML path.

    Writes, per sample ``i``, ``out/NNNNNN.png`` (source | perturbed pose maps | render) and
    ``out/NNNNNN_keypoints.png`` (the same with the source's keypoints drawn on the source and the
    perturbed keypoints on the render), and ``out/index.html``: the rows scaled to the window,
    a checkbox that shows the keypoints (or not), and a caption per row naming the image file and
    the perturbation (mode and the joints it moved, in pixels).  The perturbation of sample
    ``i`` is drawn with the generator seeded by ``(seed, i)``.  ``augment="none"`` renders each
    image's own pose (a GAN's reconstruction)."""
    dev = str(resolve_device(device))
    src = open_dataset(data, **{"on_error": "skip", **data_opts})
    name = renderer_name(renderer, gan) or "warp"
    r = make_renderer(name, src.layout, gan, dev)
    if augment != "none":
        check_mode(augment)
    perturber = Perturber(PerturbConfig(augment), src.layout) if augment != "none" else None
    fit = tuple(getattr(r, "size", None) or ((size, size) if size else ())) or None
    spec = getattr(r, "spec", PoseMapSpec())
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n = min(num, len(src))
    rows = []
    for i in tqdm(range(n), desc="render", disable=not progress):
        s = src[i]
        if fit:
            s = Fit(fit)(s)
        hw = s.image.shape[:2]
        new = perturber(s.keypoints, hw, np.random.default_rng([seed, i]), s.file_name) if perturber else s.keypoints
        rd = r(image_to_tensor(s.image)[None].to(dev), torch.from_numpy(s.masks[None]).float().to(dev),
               pad_people([s.keypoints], num_keypoints=src.layout.num_keypoints),
               pad_people([new], num_keypoints=src.layout.num_keypoints))
        if rd.keypoints is not None:   # the pose drawn (an arm the renderer would not move keeps its pose)
            new = rd.keypoints[0][: len(new)]
        maps = maps_to_rgb(render_pose_maps(new, src.layout, hw, hw, s.masks, spec), src.layout)
        rendered = tensor_to_image(rd.images)[0]
        row = np.concatenate([s.image, maps, rendered], 1)
        row_kp = np.concatenate([_overlay(s.image, s.keypoints, src.layout), maps,
                                 _overlay(rendered, new, src.layout)], 1)
        fname, kname = f"{i:06d}.png", f"{i:06d}_keypoints.png"
        for f, pic in ((fname, row), (kname, row_kp)):
            if not cv2.imwrite(str(out / f), cv2.cvtColor(pic, cv2.COLOR_RGB2BGR)):
                raise PosesynthError(f"{out / f}: cannot write the image there")
        what = "its own pose" if perturber is None else f"{augment}: {_moved(s.keypoints, new, src.layout)}"
        rows.append((fname, kname, f"{i + 1}. {s.file_name or f'sample {i}'} (image {s.image_id}): {what}"))
    body = "".join(f"<figure><img class='plain' src='{html.escape(a)}' alt='{html.escape(c)}'>"
                   f"<img class='kp' src='{html.escape(b)}' alt='{html.escape(c)}'>"
                   f"<figcaption>{html.escape(c)}</figcaption></figure>" for a, b, c in rows)
    page = out / "index.html"
    title = f"render: {html.escape(str(data))}"
    atomic_write_text(page, f"<!doctype html><html><head><meta charset='utf-8'>"
                            f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
                            f"<title>{title}</title><style>{_PAGE_CSS}</style></head><body>"
                            f"<h1>{title}</h1><p>Each row: source | perturbed pose maps ({html.escape(augment)}) | "
                            f"render ({html.escape(r.name)}), scaled to the window.</p>"
                            f"<input type='checkbox' id='kp' checked><label for='kp'> draw the keypoints (the source's "
                            f"on the source, the perturbed ones on the render)</label>"
                            f"<div class='rows'>{body}</div></body></html>")
    if progress:
        print(f"rendered {n} poses to {out} (open {page})")
    return page


# ---- render-quality --------------------------------------------------------------------------
@dataclass
class QualityConfig:
    data: str = field(default="", metadata={
        "help": "dataset to perturb and render (several as A,B) (required, here or in --config)"})
    out: str = field(default="", metadata={
        "help": "output folder (quality.json, quality.png, index.html) (required, here or in --config)"})
    data_options: DataOptions = field(default_factory=DataOptions, metadata={"help": "how the data is read"})
    renderer: tuple[str, ...] = field(default=("warp",), metadata={
        "help": "renderers to compare, comma-separated: warp, gan, refine (one --gan run per gan or refine, in order)"})
    gan: tuple[str, ...] = field(default=(), metadata={
        "help": "train-gan run(s), comma-separated, one per gan or refine renderer (unset: none)"})
    judge: str = field(default="", metadata={
        "help": "pose-network run that judges pose consistency, trained on other images than the generator (unset: "
                "no pose consistency)"})
    augment: str = field(default="arms-angle", metadata={
        "help": "perturbation: arms-angle|arms-slight|arms-high|poses:FILE|learned:RUN"})
    num: int = field(default=64, metadata={"help": "images to render: the first N of --data (0: all); with "
                                                     "--pairs, at most N pairs drawn at random (0: all)"})
    size: int = field(default=0, metadata={
        "help": "render at this square size (0: the GAN's size, else the images' own)"})
    seed: int = field(default=0, metadata={"help": "seed of the perturbations (image i uses (seed, i))"})
    device: str = field(default="auto", metadata={"help": "auto (CUDA when present, else cpu)|cpu|cuda:N"})
    multi_person: str = field(default="auto", metadata={"help": "judge decoding: auto|true|false"})
    pairs: str = field(default="", metadata={
        "help": "a clip of one person (frames in order): measure realism on its frame pairs whose bodies match and "
                "whose arms differ (frame i rendered with frame j's arms, against the real frame j) instead of --data"})
    body_tol: float = field(default=0.05, metadata={
        "help": "--pairs: every non-arm joint within this fraction of the torso size"})
    arm_min: float = field(default=0.30, metadata={
        "help": "--pairs: some arm joint moved by more than this fraction of the torso size"})
    detector: str = field(default="", metadata={
        "help": "--pairs: also score labels with this detector (mediapipe|keypointrcnn|posenet:RUN): its PCK@0.2 "
                "on the renders against the poses drawn, beside its PCK on the real target frames (unset: none)"})
    picture_rows: int = field(default=8, metadata={"help": "rows in quality.png"})
    background: str = field(default="", metadata={
        "help": "a static camera: a clip of it or a PNG of the empty scene; the warp (and a refiner's warp) fills "
                "the area an arm leaves from what the camera saw there (unset: inpainting, but a refine run uses the "
                "plate it was trained with; none: no plate at all)"})
    limb_bank: str = field(default="", metadata={
        "help": "frames of the same person and camera with keypoints (e.g. the training frames): the warp (and a "
                "refiner's warp) moves the arm of the frame whose arm lies nearest the new pose, when it is nearer "
                "than the source's own, and the body an old arm hid from frames whose body lies where the source's "
                "does (unset: the source's arm)"})
    bank_body: bool = field(default=True, metadata={"help": BANK_BODY_HELP})
    bank_leave_out: int = field(default=2, metadata={
        "help": "--pairs with a --limb-bank that holds frames of the clip: each pair's render leaves out the bank's "
                "frames that are the clip's frames within this many of its source and of its target in time, and "
                "the bank's frames within this many of theirs in the bank (train-gan --mode refine leaves out 2 "
                "either side of a training image's own frame)"})

    def validate(self) -> None:
        """Refuse impossible numbers before anything is read or written."""
        check_numbers(self, {"num": ">=0", "size": ">=0", "seed": ">=0", "picture_rows": ">=0", "body_tol": ">0",
                             "arm_min": ">0", "bank_leave_out": ">=0"})


# ---- realism on real video: frame pairs -------------------------------------------------------------
def arm_joint_mask(layout) -> np.ndarray:
    """``(K,)`` bool: the keypoints of the arms below the shoulders (elbows, wrists and hand
    points, :func:`~posesynth.datasets.plate.arm_part_indices`; not a foot's ``*_foot_index``)."""
    from ..datasets.plate import arm_part_indices

    out = np.zeros(layout.num_keypoints, bool)
    out[arm_part_indices(layout, "left") + arm_part_indices(layout, "right")] = True
    return out


def find_pairs(keypoints: np.ndarray, layout, body_tol: float = 0.05, arm_min: float = 0.30
               ) -> list[tuple[int, int]]:
    """Frame pairs ``(i, j)`` of a clip (``keypoints``: ``(N, K, 3)``, one person per frame, one
    frame size) whose bodies match and whose arms differ: every labelled non-arm joint of ``j``
    within ``body_tol`` x frame ``i``'s torso size of ``i``'s, and, for some arm whose shoulder,
    elbow and wrist are labelled in both frames, its elbow or wrist moved by more than
    ``arm_min`` x that torso size.  So rendering frame ``i`` with frame ``j``'s arms should give
    frame ``j``.  Memory stays ``(N, K)`` (one source frame at a time)."""
    from ..datasets.geometry import arm_chains, torso_size

    kp = np.asarray(keypoints, np.float64)
    arm = arm_joint_mask(layout)
    chains = arm_chains(layout)
    ts = np.array([torso_size(k, layout) for k in kp])
    vis = kp[..., 2] > 0
    pairs = []
    for i in range(len(kp)):
        if not np.isfinite(ts[i]):
            continue
        rel = np.linalg.norm(kp[:, :, :2] - kp[i, None, :, :2], axis=-1) / ts[i]          # (N, K)
        both = vis & vis[i][None]
        body_ok = np.where(both[:, ~arm], rel[:, ~arm] <= body_tol, True).all(-1) & both[:, ~arm].any(-1)
        moved = np.zeros(len(kp), bool)
        for s, e, w in chains:
            full = both[:, [s, e, w]].all(-1)
            moved |= full & (rel[:, [e, w]] > arm_min).any(-1)
        ok = body_ok & moved
        ok[i] = False
        pairs += [(i, int(j)) for j in np.nonzero(ok)[0]]
    return pairs


def render_pairs(c: "QualityConfig", progress: bool = True) -> dict[str, Any]:
    """``render-quality --pairs CLIP``: realism on a real video of one person.  For every frame
    pair of the clip whose bodies match and whose arms differ (:func:`find_pairs`), frame ``i``
    is rendered with frame ``j``'s arm keypoints by each renderer and compared with the real
    frame ``j`` inside the arm region (the capsules of the moved arms at their old and new
    positions): PSNR and SSIM, beside the same for the unchanged frame ``i`` (``copy``, the
    baseline).  Writes ``pairs.json``, ``pairs.png`` (source | each renderer | real target)
    and ``index.html``."""
    from ..datasets.formats import open_dataset

    if not c.out:
        raise ConfigError("--out is required")
    c.validate()
    dev = str(resolve_device(c.device))
    t0 = time.perf_counter()
    src = open_dataset(c.pairs, **data_options(c))
    layout = src.layout
    if not arm_joint_mask(layout).any():
        raise ConfigError(f"{c.pairs}: layout '{layout.name}' has no elbows or wrists to move")
    kps = source_annotations(src)
    first = np.stack([k[0] if len(k) else np.zeros((layout.num_keypoints, 3), np.float32) for k in kps])
    sizes = {tuple(sz) for sz in getattr(src, "sizes", []) or [] if sz is not None}
    if not sizes:   # readers that do not state their images' sizes: the first and last frames
        sizes = {src[0].image.shape[:2][::-1], src[len(src) - 1].image.shape[:2][::-1]}
    if len(sizes) > 1:
        raise ConfigError(f"{c.pairs}: frames of {len(sizes)} sizes ({', '.join(f'{w}x{h}' for w, h in sorted(sizes))}); "
                          "--pairs compares frames of one clip, of one size")
    pairs = find_pairs(first, layout, c.body_tol, c.arm_min)
    if not pairs:
        raise PosesynthError(f"{c.pairs}: no frame pairs whose bodies match (every non-arm joint within "
                             f"{c.body_tol:g} x the torso size) and whose arms differ (by more than {c.arm_min:g} x)")
    rng = np.random.default_rng(c.seed)
    if c.num and len(pairs) > c.num:
        pairs = [pairs[k] for k in np.sort(rng.choice(len(pairs), c.num, replace=False))]
    bank = _bank(c, layout)
    near_of = None   # (i, j) -> the bank's frames a pair leaves out, for a bank that holds the clip's
    if bank is not None:
        (w, h), = sizes
        if bank.size != (h, w):
            raise ConfigError(f"{bank.name}: frames of {bank.size[1]}x{bank.size[0]}, the clip's are {w}x{h}: a limb "
                              "bank is frames of the same camera")
        near_of = _bank_leave_out(bank, src, c.bank_leave_out)
        if near_of is not None:
            log.warning("%s holds frames of %s: each pair's render leaves out the bank's frames within %d of its source "
                        "and of its target (--bank-leave-out)", bank.name, c.pairs, c.bank_leave_out)
    rends = _renderers(list(c.renderer), list(c.gan), layout, dev, _background(c), bank)
    warps = _warps(rends)
    arm = arm_joint_mask(layout)
    names = ["copy", *rends]
    per = {k: {"psnr": [], "ssim": []} for k in names}
    # the region's squared error split where it lies: where only the old arm was (what the
    # renderer must erase), where only the new one is (what it must draw), and where both are
    sse = {k: dict.fromkeys(REGION_PARTS, 0.0) for k in names}
    part_px = dict.fromkeys(REGION_PARTS, 0)
    rows, picture = [], []
    cache: dict[int, Any] = {}
    seen: dict[str, list] = {k: [] for k in [*rends, "real target"]}   # (image, keypoints) for the detector

    def frame(i: int):
        if i not in cache:
            cache.clear() if len(cache) > 8 else None
            cache[i] = src[i]
        return cache[i]

    skipped = 0
    for i, j in tqdm(pairs, desc="render-quality pairs", disable=not progress):
        a, b = frame(i), frame(j)
        if a.image.shape != b.image.shape:
            raise ConfigError(f"{c.pairs}: frames {i} and {j} have sizes {a.image.shape[1]}x{a.image.shape[0]} and "
                              f"{b.image.shape[1]}x{b.image.shape[0]}; --pairs compares frames of one size")
        old = first[i][None]
        new = old.copy()
        new[0, arm] = np.where(first[j][arm, 2:] > 0, first[j][arm], old[0, arm])
        hw = a.image.shape[:2]
        region = limb_region(old[None], new[None], layout, hw)
        if not bool((region > 0).any()):   # no arm both frames label fully: nothing to compare
            skipped += 1
            continue
        row = {"source": int(i), "target": int(j), "region_px": float(region.sum())}
        if near_of is not None:   # the clip's frames near the source and the target are not the bank's
            view = bank.without(near_of(i, j))
            for wr in warps:
                wr.bank = view
            row["bank_frames"] = len(view.images) if view is not None else 0
        outs = {"copy": a.image}
        img_t = image_to_tensor(a.image)[None].to(dev)
        mask_t = torch.from_numpy(a.masks[None]).float().to(dev)
        for name, r in rends.items():
            rd = r(img_t, mask_t, old[None], new[None])
            outs[name] = tensor_to_image(rd.images)[0]
            if c.detector:   # scored against the pose drawn (an arm the warp kept is where it was)
                seen[name].append((outs[name], rd.keypoints[0] if rd.keypoints is not None else new))
        if c.detector:
            seen["real target"].append((b.image, first[j][None]))
        # scored on the region's box (8 px wider than SSIM's window): the same figures, far cheaper
        ys, xs = np.nonzero(region[0, 0].numpy() > 0)
        y0, y1, x0, x1 = max(ys.min() - 8, 0), ys.max() + 9, max(xs.min() - 8, 0), xs.max() + 9
        reg_c, tgt_c = region[..., y0:y1, x0:x1], b.image[y0:y1, x0:x1]
        parts = region_parts(old, new, layout, hw, region, (y0, y1, x0, x1))
        for k, m in parts.items():
            part_px[k] += int(m.sum())
        for name, im in outs.items():
            im_c = np.ascontiguousarray(im[y0:y1, x0:x1])
            sq = ((im_c.astype(np.float64) - tgt_c) ** 2).sum(-1)
            for k, m in parts.items():
                sse[name][k] += float(sq[m].sum())
            pv, sv = float(psnr(im_c, tgt_c, reg_c)[0]), float(ssim(im_c, tgt_c, reg_c)[0])
            per[name]["psnr"].append(pv)
            per[name]["ssim"].append(sv)
            row[f"{name}_psnr"], row[f"{name}_ssim"] = pv, sv
        rows.append(row)
        if len(picture) < c.picture_rows:
            pad = 40
            y0, y1 = max(ys.min() - pad, 0), min(ys.max() + pad, hw[0])
            x0, x1 = max(xs.min() - pad, 0), min(xs.max() + pad, hw[1])
            cells = [outs["copy"]] + [outs[k] for k in rends] + [b.image]
            cells = [cv2.resize(np.ascontiguousarray(x[y0:y1, x0:x1]), (240, int(240 * (y1 - y0) / max(x1 - x0, 1))))
                     for x in cells]
            picture.append(np.concatenate(cells, 1))
    for wr in warps:   # (its description counts the whole bank's frames)
        wr.bank = bank
    if not rows:
        raise PosesynthError(f"{c.pairs}: none of the {len(pairs)} pairs has an arm region to compare")
    res: dict[str, Any] = {"clip": str(c.pairs), "pairs": len(rows), "skipped_pairs": skipped,
                           "body_tol": c.body_tol, "arm_min": c.arm_min, "renderers": {}}
    if near_of is not None:
        res["bank_leave_out"] = {"frames": c.bank_leave_out, "clip_frames_in_bank": near_of.held,
                                 "pairs_without_bank": sum(r["bank_frames"] == 0 for r in rows)}
    base = np.asarray(per["copy"]["psnr"], float)
    for name in names:
        pv, sv = np.asarray(per[name]["psnr"], float), np.asarray(per[name]["ssim"], float)
        e: dict[str, Any] = {"psnr": float(np.mean(pv)), "psnr_sd": float(np.std(pv)), "ssim": float(np.mean(sv)),
                             "psnr_minus_copy": float(np.mean(pv - base))}
        # PSNR of the pixels of each part pooled over all pairs (every pixel weighs the same)
        e["psnr_parts"] = {k: _pooled_psnr(sse[name][k], part_px[k]) for k in REGION_PARTS}
        e["sse_share"] = {k: sse[name][k] / max(sum(sse[name].values()), 1e-12) for k in REGION_PARTS}
        if name != "copy":
            e["describe"] = rends[name].describe()
        res["renderers"][name] = e
    res["part_pixels"] = part_px
    if "warp" in rends:
        w = np.asarray(per["warp"]["psnr"], float)
        for name in rends:
            if name != "warp":
                res["renderers"][name]["ahead_of_warp"] = float(np.mean(np.asarray(per[name]["psnr"], float) > w))
    if c.detector:   # labels kept: the detector finds the drawn pose on the renders as well as on real frames
        det = make_detector(c.detector, device=dev, max_people=1, every=0)
        try:
            pcks = {k: pose_consistency(det, [im for im, _ in v], np.stack([kp for _, kp in v]), layout)
                    for k, v in seen.items() if v}
        finally:
            getattr(det, "close", lambda: None)()
        real = pcks.get("real target", {}).get("PCK@0.2", float("nan"))
        res["detector"] = {"name": c.detector, "PCK_real_targets": real}
        for k in rends:
            if k in pcks:
                res["renderers"][k]["detector_PCK"] = pcks[k]["PCK@0.2"]
                res["renderers"][k]["detector_PCK_ratio"] = pcks[k]["PCK@0.2"] / max(real, 1e-9)
    res["seconds"] = time.perf_counter() - t0
    out = Path(c.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "pairs.json", {**res, "per_pair": rows}, indent=1)
    if picture:
        hmax = max(p.shape[0] for p in picture)
        pic = np.concatenate([np.pad(p, ((0, hmax - p.shape[0]), (0, 0), (0, 0))) for p in picture], 0)
        cv2.imwrite(str(out / "pairs.png"), cv2.cvtColor(pic, cv2.COLOR_RGB2BGR))
    table = "".join(f"<tr><td>{html.escape(k)}</td><td>{v['psnr']:.2f} ± {v['psnr_sd']:.2f}</td><td>{v['ssim']:.3f}</td>"
                    f"<td>{v['psnr_minus_copy']:+.2f}</td><td>{_pct(v.get('ahead_of_warp'))}</td>"
                    + "".join(f"<td>{_db(v['psnr_parts'][p])} ({100 * v['sse_share'][p]:.0f}%)</td>" for p in REGION_PARTS)
                    + "</tr>" for k, v in res["renderers"].items())
    atomic_write_text(out / "index.html", f"""<!doctype html><meta charset="utf-8"><title>render quality: pairs</title>
<style>body{{font-family:sans-serif}}td,th{{padding:3px 8px;border-bottom:1px solid #ddd}}img{{max-width:100%}}</style>
<h1>Realism on {html.escape(str(c.pairs))}: {len(rows)} frame pairs</h1>
<p>Frame i rendered with frame j's arms, compared with the real frame j inside the arm region (old and new capsules).
copy: frame i unchanged (the baseline).</p>
<table><tr><th>renderer</th><th>PSNR in the arm region (dB)</th><th>SSIM</th><th>minus copy (dB)</th>
<th>pairs ahead of warp</th>{''.join(f"<th>{p}: pooled PSNR (share of the error)</th>" for p in REGION_PARTS)}</tr>
{table}</table>
<p>The region in three parts, pooled over all pairs (every pixel of the part weighs the same, the region's soft edge
included at full weight, so these differ from the per-pair means on the left): inside the capsules of the old pose's
arms only (what must be erased), of the new pose's only (what must be drawn), and of both.</p>
<p>source | {' | '.join(html.escape(k) for k in rends)} | real target (crops around the region)</p><img src="pairs.png">""")
    if progress:
        print(f"render-quality on {len(rows)} pairs of {c.pairs}: " + "; ".join(
            f"{k} {v['psnr']:.2f} dB ({v['psnr_minus_copy']:+.2f} vs copy"
            + (f", ahead of warp on {100 * v['ahead_of_warp']:.0f}% of pairs" if "ahead_of_warp" in v else "") + ")"
            + (f", detector PCK {v['detector_PCK']:.3f} ({100 * v['detector_PCK_ratio']:.0f}% of real "
               f"{res['detector']['PCK_real_targets']:.3f})" if "detector_PCK" in v else "")
            for k, v in res["renderers"].items()) + f". Report: {out / 'index.html'}")
        print("  pooled PSNR by part of the region (" + ", ".join(f"{p}: {part_px[p]} px" for p in REGION_PARTS) + "): "
              + "; ".join(f"{k} " + ", ".join(_db(v['psnr_parts'][p]) for p in REGION_PARTS)
                          for k, v in res["renderers"].items()))
    return res


#: the parts of a pair's arm region (see :func:`region_parts`)
REGION_PARTS = ("old arm only", "new arm only", "both")


def region_parts(old: np.ndarray, new: np.ndarray, layout, hw: tuple[int, int], region: torch.Tensor,
                 box: tuple[int, int, int, int]) -> dict[str, np.ndarray]:
    """The arm region of a pair (``region`` ``(1, 1, H, W)``: :func:`limb_region` of the moved
    arms at their old and new places) split by where the arms are, as ``(y1 - y0, x1 - x0)``
    bool masks on ``box``: inside the capsules of the old pose's arms (``old`` ``(P, K, 3)``,
    every labelled arm) and not the new pose's, inside the new pose's and not the old's, and
    inside both.  The region lies inside the two poses' arm capsules, so the parts cover it; a
    pixel outside both (none, unless the two capsule sets were drawn differently) is in no part."""
    y0, y1, x0, x1 = box
    r = region[0, 0, y0:y1, x0:x1].numpy() > 0
    ro = limb_region(old[None], None, layout, hw)[0, 0, y0:y1, x0:x1].numpy() > 0
    rn = limb_region(new[None], None, layout, hw)[0, 0, y0:y1, x0:x1].numpy() > 0
    return {"old arm only": r & ro & ~rn, "new arm only": r & rn & ~ro, "both": r & rn & ro}


def _db(v: "float | None") -> str:
    return "n/a" if v is None else f"{v:.2f}"


def _pooled_psnr(sse: float, pixels: int) -> float:
    """PSNR in dB of ``pixels`` RGB pixels whose squared errors (0-255 scale) sum to ``sse``;
    ``None`` (JSON's null) for no pixels or no error."""
    if not pixels or sse <= 0:
        return None
    return float(10 * np.log10(255.0 ** 2 / (sse / (3 * pixels))))


def _bank_leave_out(bank: Any, src: Any, n: int) -> Any:
    """For a limb bank that holds frames of the clip ``src`` (pixel for pixel), the bank's frames
    pair ``(i, j)`` leaves out, as ``near_of(i, j) -> set[int]`` (with ``near_of.held``, the
    number of the clip's frames the bank holds): those equal to the clip's frames within ``n``
    of ``i`` or ``j`` in the clip's time order, and those within ``n`` of the frames equal to
    ``i`` and ``j`` in the bank's (a bank sampled more densely from the same video); ``None``
    when the bank holds none of the clip's frames."""
    ids: list[Any] = []   # each frame's sample without its pixels (time_order reads its ids only)

    def images():
        for k in range(len(src)):
            s = src[k]
            ids.append(SimpleNamespace(image_id=s.image_id, meta=s.meta))
            yield s.image

    same = bank.matches(images())
    held = sum(bool(m) for m in same)
    if not held:
        return None
    rank = np.empty(len(ids), np.int64)
    rank[time_order(ids)] = np.arange(len(ids))

    def near_of(i: int, j: int) -> "set[int]":
        close = np.nonzero((np.abs(rank - rank[i]) <= n) | (np.abs(rank - rank[j]) <= n))[0]
        out = {b for k in close for b in same[k]}
        out |= {b + d for b in same[i] + same[j] for d in range(-n, n + 1) if 0 <= b + d < len(bank.images)}
        return out
    near_of.held = held
    return near_of


def _warps(rends: "dict[str, Renderer]") -> list:
    """The warps among ``rends`` and inside them (a refiner's), whose bank a pair may replace."""
    from .renderers import WarpRenderer

    return [w for r in rends.values() for w in (r, getattr(r, "warp", None)) if isinstance(w, WarpRenderer)]


def _bank(c: "QualityConfig", layout: Any) -> Any:
    """``--limb-bank``'s frames, or ``None``."""
    if c.limb_bank and not {"warp", "refine"} & set(c.renderer):
        raise ConfigError("--limb-bank (frames whose arms the warp moves) is for the warp and refine renderers")
    return load_limb_bank(c.limb_bank, layout, c.bank_body, **data_options(c))


def _background(c: "QualityConfig") -> Any:
    """``--background``'s plate, or ``None``."""
    if c.background and not {"warp", "refine"} & set(c.renderer):
        raise ConfigError("--background (a static camera's background plate) is for the warp and refine renderers")
    return background_option(c.background, **data_options(c))


def _pct(v: "float | None") -> str:
    return "" if v is None else f"{100 * v:.0f}%"


def judge_pck(model: torch.nn.Module, images: list[np.ndarray], keypoints: list[np.ndarray], layout,
              size: tuple[int, int], multi_person: bool, device: str, alpha: float = 0.2, batch: int = 16,
              joints: "list[np.ndarray] | None" = None) -> tuple[float, float]:
    """A pose network's PCK@alpha over ``images`` (uint8 HWC, any size) against ``keypoints``
    (per image ``(P, K, 3)`` in that image's pixels), people matched by OKS: over every labelled
    keypoint, and over the ``joints`` given per image (``(P, K)`` bool, e.g. the moved elbows and
    wrists; ``nan`` without them)."""
    from ..posenet.load import predict_batch
    from ..posenet.metrics import _pck_counts

    hit = cnt = hit_j = cnt_j = 0.0
    for s in range(0, len(images), batch):
        ims = images[s:s + batch]
        mats = [fit_matrix(im.shape[:2], size, "letterbox") for im in ims]
        x = torch.stack([image_to_tensor(cv2.warpAffine(im, m, (size[1], size[0]), flags=cv2.INTER_LINEAR))
                         for im, m in zip(ims, mats)]).to(device)
        kps, _, _, _ = predict_batch(model, x, layout, multi_person)
        for j, (kp, gt, m) in enumerate(zip(kps, keypoints[s:s + batch], mats)):
            pred = apply_affine(kp, invert_affine(m)) if len(kp) else kp
            sel = joints[s + j] if joints is not None else np.zeros(gt.shape[:2], bool)
            labelled = (gt[:, :, 2] > 0).any(-1)
            gt, sel = gt[labelled], sel[labelled]
            c, n, _, _ = _pck_counts(gt, pred, layout, alpha)
            hit, cnt = hit + c.sum(), cnt + n.sum()
            c, n, _, _ = _pck_counts(gt, pred, layout, alpha, select=sel)
            hit_j, cnt_j = hit_j + c.sum(), cnt_j + n.sum()
    return (float(hit / cnt) if cnt else float("nan")), (float(hit_j / cnt_j) if cnt_j else float("nan"))


@torch.no_grad()
def render_quality(c: QualityConfig, progress: bool = True) -> dict[str, Any]:
    """See the module docstring.  Returns the figures written to ``quality.json``."""
    if not c.out:
        raise ConfigError("--out is required")
    c.validate()
    check_mode(c.augment)
    dev = str(resolve_device(c.device))
    t0 = time.perf_counter()
    src = open_dataset(c.data, **data_options(c))
    layout = src.layout
    rends = _renderers(list(c.renderer), list(c.gan), layout, dev, _background(c), _bank(c, layout))
    sizes = {tuple(r.size) for r in rends.values() if hasattr(r, "size")}
    if len(sizes) > 1:
        raise ConfigError(f"the GAN runs render at different sizes {sorted(sizes)}; compare runs of one size")
    size = (c.size, c.size) if c.size else (sizes.pop() if sizes else None)
    perturber = Perturber(PerturbConfig(c.augment), layout)
    n = min(c.num, len(src)) if c.num else len(src)
    rows: list[dict[str, Any]] = []
    per: dict[str, dict[str, list]] = {k: {"psnr_M": [], "ssim_M": [], "psnr": [], "ssim": [], "images": [],
                                           "drawn": []} for k in rends}
    sources, src_kps, new_kps, gts, moved = [], [], [], [], []
    picture = []
    for i in tqdm(range(n), desc="render-quality", disable=not progress):
        s = src[i]
        scene = s.meta.get("scene")
        if scene is not None:  # lossless source and the true image of the new pose
            s = Sample(SceneSpec.from_dict(scene).render().image, s.keypoints, s.masks, s.image_id, s.file_name, s.meta)
        m_fit = None
        if size is not None and s.image.shape[:2] != tuple(size):
            f = Fit(size)(s)
            m_fit = f.meta["to_input"]
            s = f
        hw = s.image.shape[:2]
        new = perturber(s.keypoints, hw, np.random.default_rng([c.seed, i]), s.file_name)
        def truth(kp: np.ndarray) -> "np.ndarray | None":   # the scene redrawn in the pose kp
            if scene is None:
                return None
            g = redraw_scene(scene, apply_affine(kp, invert_affine(m_fit)) if m_fit is not None else kp)
            return Fit(size)(g).image if m_fit is not None else g.image

        gt = truth(new)
        old_p, new_p = (pad_people([s.keypoints], num_keypoints=layout.num_keypoints),
                        pad_people([new], num_keypoints=layout.num_keypoints))
        region = limb_region(old_p, new_p, layout, hw)
        img_t = image_to_tensor(s.image)[None].to(dev)
        mask_t = torch.from_numpy(s.masks[None]).float().to(dev)
        rendered = {}
        for name, r in rends.items():
            rd = r(img_t, mask_t, old_p, new_p)
            out = tensor_to_image(rd.images)[0]
            rendered[name] = out
            drawn = rd.keypoints[0][: len(new)] if rd.keypoints is not None else new   # an arm kept is not moved
            per[name]["images"].append(out)
            per[name]["drawn"].append(drawn)
            gt_r = gt if np.array_equal(drawn, new) else truth(drawn)
            if gt_r is not None:
                per[name]["psnr_M"].append(float(psnr(out, gt_r, region)[0]))
                per[name]["ssim_M"].append(float(ssim(out, gt_r, region)[0]))
                per[name]["psnr"].append(float(psnr(out, gt_r)[0]))
                per[name]["ssim"].append(float(ssim(out, gt_r)[0]))
        sources.append(s.image)
        src_kps.append(s.keypoints)
        new_kps.append(new)
        moved.append(np.abs(new[..., :2] - s.keypoints[..., :2]).max(-1) > 1e-3)
        gts.append(gt)
        rows.append({"index": i, "file": s.file_name, "region_px": float(region.sum()),
                     **{f"{k}_psnr_M": per[k]["psnr_M"][-1] for k in rends if gt is not None}})
        if len(picture) < c.picture_rows:
            spec = getattr(next(iter(rends.values())), "spec", PoseMapSpec())
            maps = maps_to_rgb(render_pose_maps(new, layout, hw, hw, s.masks, spec), layout)
            cols = [s.image, maps] + [rendered[k] for k in rends] + ([gt] if gt is not None else [])
            picture.append(np.concatenate(cols, 1))
    res: dict[str, Any] = {"data": str(c.data), "images": n, "augment": c.augment, "size": list(size) if size else None,
                           "paired_ground_truth": any(g is not None for g in gts), "renderers": {}}
    judge = None
    if c.judge:
        from ..posenet.load import load_posenet

        judge, jl, jmeta = load_posenet(c.judge, dev)
        if jl.keypoints != layout.keypoints:
            raise PosesynthError(f"judge {c.judge} predicts layout '{jl.name}', {c.data} is '{layout.name}'")
        jsize = tuple(jmeta["config"]["size"])
        mp = {"auto": max(len(k) for k in src_kps) > 1, "true": True, "false": False}[str(c.multi_person).lower()]
        real_all, real_moved = judge_pck(judge, sources, src_kps, layout, jsize, mp, dev, joints=moved)
        res["judge"] = {"run": c.judge, "size": list(jsize), "multi_person": mp, "PCK_real": real_all,
                        "PCK_real_moved_joints": real_moved}
        if res["paired_ground_truth"]:
            have = [i for i, g in enumerate(gts) if g is not None]
            t_all, t_moved = judge_pck(judge, [gts[i] for i in have], [new_kps[i] for i in have], layout, jsize, mp,
                                       dev, joints=[moved[i] for i in have])
            res["judge"]["PCK_true_new_pose"], res["judge"]["PCK_true_new_pose_moved_joints"] = t_all, t_moved
    for name, d in per.items():
        entry: dict[str, Any] = {"describe": rends[name].describe()}
        for k in ("psnr_M", "ssim_M", "psnr", "ssim"):
            v = np.asarray(d[k], float)
            v = v[np.isfinite(v)]
            if len(v):
                entry[k] = float(v.mean())
                entry[k + "_sd"] = float(v.std())
        if judge is not None:
            entry["judge_PCK"], entry["judge_PCK_moved_joints"] = judge_pck(judge, d["images"], d["drawn"], layout,
                                                                            jsize, mp, dev, joints=moved)
            entry["judge_PCK_ratio"] = entry["judge_PCK"] / max(res["judge"]["PCK_real"], 1e-9)
            entry["judge_PCK_moved_joints_ratio"] = (entry["judge_PCK_moved_joints"]
                                                     / max(res["judge"]["PCK_real_moved_joints"], 1e-9))
        res["renderers"][name] = entry
    res["seconds"] = time.perf_counter() - t0
    out = Path(c.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "quality.json", {**res, "per_image": rows}, indent=1)
    if picture:
        w = max(p.shape[1] for p in picture)
        pic = np.concatenate([np.pad(p, ((0, 0), (0, w - p.shape[1]), (0, 0))) for p in picture], 0)
        cv2.imwrite(str(out / "quality.png"), cv2.cvtColor(pic, cv2.COLOR_RGB2BGR))
    cols = "source | perturbed pose maps | " + " | ".join(rends) + (" | ground truth" if res["paired_ground_truth"] else "")
    table = "".join(f"<tr><td>{html.escape(k)}</td>" + "".join(
        f"<td>{v.get(m, float('nan')):.3f}</td>" for m in ("psnr_M", "ssim_M", "psnr", "ssim", "judge_PCK_moved_joints",
                                                           "judge_PCK_moved_joints_ratio", "judge_PCK",
                                                           "judge_PCK_ratio")) + "</tr>"
        for k, v in res["renderers"].items())
    atomic_write_text(out / "index.html", f"""<!doctype html><meta charset="utf-8"><title>render quality</title>
<style>body{{font-family:sans-serif}}td,th{{padding:3px 8px;border-bottom:1px solid #ddd}}</style>
<h1>Render quality on {html.escape(str(c.data))} ({n} images, {html.escape(c.augment)})</h1>
<table><tr><th>renderer</th><th>PSNR in M (dB)</th><th>SSIM in M</th><th>PSNR whole</th><th>SSIM whole</th>
<th>judge PCK@0.2, moved joints</th><th>renders / real</th><th>judge PCK@0.2, all joints</th>
<th>renders / real</th></tr>{table}</table>
<p>judge: {html.escape(str(res.get('judge')))}</p><p>{html.escape(cols)}</p><img src="quality.png">""")
    if progress:
        parts = []
        for k, v in res["renderers"].items():
            bits = []
            if "psnr_M" in v:
                bits.append(f"PSNR in M {v['psnr_M']:.2f} dB, SSIM in M {v['ssim_M']:.3f}")
            if "judge_PCK" in v:
                bits.append(f"judge PCK on moved joints {v['judge_PCK_moved_joints']:.3f} "
                            f"({100 * v['judge_PCK_moved_joints_ratio']:.0f}% of real "
                            f"{res['judge']['PCK_real_moved_joints']:.3f}), all joints {v['judge_PCK']:.3f} "
                            f"({100 * v['judge_PCK_ratio']:.0f}%)")
            parts.append(f"{k}: " + ", ".join(bits))
        print(f"render-quality on {n} images: " + "; ".join(parts) + f". Report: {out / 'index.html'}")
    return res
