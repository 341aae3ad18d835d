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
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from tqdm import tqdm

from ..datasets.formats import data_options, open_dataset
from ..datasets.geometry import limb_region
from ..datasets.posemaps import PoseMapSpec, render_pose_maps
from ..datasets.sample import Sample
from ..datasets.synthetic import SceneSpec, redraw_scene
from ..datasets.torch_dataset import image_to_tensor, tensor_to_image
from ..datasets.transforms import Fit, apply_affine, fit_matrix, invert_affine
from ..datasets.visualize import maps_to_rgb
from ..errors import ConfigError, PosesynthError
from ..imagemetrics import psnr, ssim
from ..io import atomic_write_json, atomic_write_text
from ..runs import resolve_device
from .perturb import PerturbConfig, Perturber, check_mode
from .renderers import Renderer, make_renderer

__all__ = ["render_dataset", "QualityConfig", "render_quality", "judge_pck"]


def _pad(kps: list[np.ndarray], k: int) -> np.ndarray:
    p = max(max((len(x) for x in kps), default=1), 1)
    out = np.zeros((len(kps), p, k, 3), np.float32)
    for i, x in enumerate(kps):
        out[i, :len(x)] = x
    return out


def _renderers(names: list[str], gans: list[str], layout, device: str) -> dict[str, Renderer]:
    out: dict[str, Renderer] = {}
    gi = 0
    for name in names:
        if name == "gan":
            if gi >= len(gans):
                raise ConfigError("each gan renderer needs a run: --gan RUN (comma-separated for several)")
            r = make_renderer("gan", layout, gans[gi], device)
            label = r.name if r.name not in out else f"{r.name}-{gi}"
            out[label] = r
            gi += 1
        else:
            out[name] = make_renderer(name, layout, device=device)
    return out


@torch.no_grad()
def render_dataset(data: "str | Path", out: "str | Path", renderer: str = "", gan: str = "", num: int = 16,
                   augment: str = "arms-angle", seed: int = 0, device: str = "auto", size: int = 0,
                   progress: bool = True, **data_opts: Any) -> Path:
    """Render perturbed poses of the first ``num`` samples of ``data``; writes ``out/NNNNNN.png``
    (source | perturbed pose maps | render) and ``out/index.html``.  ``augment="none"``
    renders each image's own pose (a GAN's reconstruction).  Returns the HTML path."""
    dev = str(resolve_device(device))
    src = open_dataset(data, **{"on_error": "skip", **data_opts})
    name = renderer or ("gan" if gan else "warp")
    r = make_renderer(name, src.layout, gan, dev)
    if augment != "none":
        check_mode(augment)
    perturber = Perturber(PerturbConfig(augment), src.layout) if augment != "none" else None
    fit = tuple(getattr(r, "size", None) or ((size, size) if size else ())) or None
    spec = getattr(r, "spec", PoseMapSpec())
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n = min(num, len(src))
    names = []
    for i in tqdm(range(n), desc="render", disable=not progress):
        s = src[i]
        if fit:
            s = Fit(fit)(s)
        hw = s.image.shape[:2]
        new = perturber(s.keypoints, hw, np.random.default_rng([seed, i]), s.file_name) if perturber else s.keypoints
        rd = r(image_to_tensor(s.image)[None].to(dev), torch.from_numpy(s.masks[None]).float().to(dev),
               _pad([s.keypoints], src.layout.num_keypoints), _pad([new], src.layout.num_keypoints))
        maps = maps_to_rgb(render_pose_maps(new, src.layout, hw, hw, s.masks, spec), src.layout)
        row = np.concatenate([s.image, maps, tensor_to_image(rd.images)[0]], 1)
        fname = f"{i:06d}.png"
        cv2.imwrite(str(out / fname), cv2.cvtColor(row, cv2.COLOR_RGB2BGR))
        names.append(fname)
    body = "".join(f"<div><img src='{html.escape(x)}'></div>" for x in names)
    page = out / "index.html"
    atomic_write_text(page, f"<!doctype html><meta charset='utf-8'><title>render</title><p>source | perturbed pose "
                            f"maps ({html.escape(augment)}) | render ({html.escape(r.name)})</p>{body}")
    if progress:
        print(f"rendered {n} poses to {out} (open {page})")
    return page


# ---- render-quality --------------------------------------------------------------------------
@dataclass
class QualityConfig:
    data: str = field(default="", metadata={"help": "dataset to perturb and render"})
    out: str = field(default="", metadata={"help": "output folder (quality.json, quality.png, index.html)"})
    image_dir: str = field(default="", metadata={"help": "folder the images' file_name values are relative to "
                                                         "(default: see the README's resolution order)"})
    on_error: str = field(default="skip", metadata={"help": "skip (drop bad images, counted and reported) | raise"})
    out_of_frame: str = field(default="unlabel", metadata={"help": "labelled points outside the image: "
                                                                   "unlabel|clip|skip-person|skip-image"})
    renderer: tuple[str, ...] = field(default=("warp",), metadata={"help": "warp,gan (several: comma-separated)"})
    gan: tuple[str, ...] = field(default=(), metadata={"help": "train-gan run(s), one per gan renderer"})
    judge: str = field(default="", metadata={"help": "pose-network run that judges pose consistency (trained on "
                                                     "other images than the generator)"})
    augment: str = field(default="arms-angle", metadata={"help": "perturbation"})
    num: int = field(default=64, metadata={"help": "images to render (the first N)"})
    size: int = field(default=0, metadata={"help": "render size (default: the GAN's, else the images' own)"})
    seed: int = 0
    device: str = "auto"
    multi_person: str = field(default="auto", metadata={"help": "judge decoding: auto|true|false"})
    picture_rows: int = 8

    def validate(self) -> None:
        """Refuse impossible numbers before anything is read or written."""
        from ..config import check_numbers

        check_numbers(self, {"num": ">=1", "size": ">=0", "seed": ">=0", "picture_rows": ">=0"})


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
    rends = _renderers(list(c.renderer), list(c.gan), layout, dev)
    sizes = {tuple(r.size) for r in rends.values() if hasattr(r, "size")}
    if len(sizes) > 1:
        raise ConfigError(f"the GAN runs render at different sizes {sorted(sizes)}; compare runs of one size")
    size = (c.size, c.size) if c.size else (sizes.pop() if sizes else None)
    perturber = Perturber(PerturbConfig(c.augment), layout)
    n = min(c.num, len(src))
    rows: list[dict[str, Any]] = []
    per: dict[str, dict[str, list]] = {k: {"psnr_M": [], "ssim_M": [], "psnr": [], "ssim": [], "images": []}
                                       for k in rends}
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
        gt = None
        if scene is not None:
            new_native = apply_affine(new, invert_affine(m_fit)) if m_fit is not None else new
            g = redraw_scene(scene, new_native)
            gt = Fit(size)(g).image if m_fit is not None else g.image
        old_p, new_p = _pad([s.keypoints], layout.num_keypoints), _pad([new], layout.num_keypoints)
        region = limb_region(old_p, new_p, layout, hw)
        img_t = image_to_tensor(s.image)[None].to(dev)
        mask_t = torch.from_numpy(s.masks[None]).float().to(dev)
        rendered = {}
        for name, r in rends.items():
            out = tensor_to_image(r(img_t, mask_t, old_p, new_p).images)[0]
            rendered[name] = out
            per[name]["images"].append(out)
            if gt is not None:
                per[name]["psnr_M"].append(float(psnr(out, gt, region)[0]))
                per[name]["ssim_M"].append(float(ssim(out, gt, region)[0]))
                per[name]["psnr"].append(float(psnr(out, gt)[0]))
                per[name]["ssim"].append(float(ssim(out, gt)[0]))
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
            entry["judge_PCK"], entry["judge_PCK_moved_joints"] = judge_pck(judge, d["images"], new_kps, layout, jsize,
                                                                            mp, dev, joints=moved)
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
