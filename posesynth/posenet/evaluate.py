"""``posesynth evaluate`` and ``posesynth predict``."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from ..datasets.formats import open_dataset
from ..datasets.posemaps import PoseMapSpec
from ..datasets.sample import Sample
from ..datasets.torch_dataset import PoseMapDataset, image_to_tensor
from ..datasets.visualize import draw_sample
from ..errors import PosesynthError
from ..io import atomic_write_json
from .metrics import PoseMetrics
from .trainer import load_posenet, predict_batch

__all__ = ["evaluate_run", "predict_images"]

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@torch.no_grad()
def evaluate_run(run: "str | Path", data: "str | Path", out: "str | Path | None" = None, device: str = "cpu",
                 batch_size: int = 8, multi_person: "bool | None" = None, progress: bool = True) -> dict[str, float]:
    """Metrics of a trained pose network on a dataset; prints a table and writes JSON."""
    model, layout, meta = load_posenet(run, device)
    cfg = meta["config"]
    size = tuple(cfg["size"])
    src = open_dataset(data, layout=layout, on_error="skip")
    if src.layout.keypoints != layout.keypoints:
        raise PosesynthError(f"{run} predicts layout '{layout.name}', {data} is '{src.layout.name}'")
    ds = PoseMapDataset(src, size, None, 4, PoseMapSpec(cfg["sigma"], cfg["paf_width"]), with_maps=False)
    mp = cfg["multi_person"] if multi_person is None else multi_person
    metrics = PoseMetrics(layout, cfg.get("pck_alpha", 0.2))
    for s in tqdm(range(0, len(ds), batch_size), desc="evaluate", disable=not progress):
        items = [ds[i] for i in range(s, min(s + batch_size, len(ds)))]
        images = torch.stack([it["image"] for it in items]).to(device)
        kps, scores, mask, _ = predict_batch(model, images, layout, mp, cfg.get("decode_threshold", 0.1))
        for i, it in enumerate(items):
            metrics.add(it["keypoints"].numpy(), kps[i], scores[i], size,
                        mask[i] if mask is not None else None, it["masks"].numpy() if mask is not None else None)
    res = metrics.result()
    res["images"] = len(ds)
    if progress:
        print(f"{'metric':<28}{'value':>10}")
        for k, v in res.items():
            print(f"{k:<28}{v:>10.4f}" if isinstance(v, float) else f"{k:<28}{v:>10}")
    out = Path(out) if out else Path(run) / "metrics.json"
    atomic_write_json(out, {"data": str(data), "run": str(run), **res}, indent=1)
    if progress:
        print(f"wrote {out}")
    return res


@torch.no_grad()
def predict_images(run: "str | Path", images: "str | Path", out: "str | Path", device: str = "cpu",
                   progress: bool = True) -> int:
    """Draw the network's predictions on every image of a folder; returns the count."""
    model, layout, meta = load_posenet(run, device)
    cfg = meta["config"]
    size = tuple(cfg["size"])
    folder = Path(images)
    if not folder.is_dir():
        raise PosesynthError(f"{folder}: not a folder of images")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise PosesynthError(f"{folder}: no images ({', '.join(IMAGE_EXTS)})")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for f in tqdm(files, desc="predict", disable=not progress):
        bgr = cv2.imread(str(f))
        if bgr is None:
            print(f"skipping {f}: unreadable image")
            continue
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        h, w = rgb.shape[:2]
        x = image_to_tensor(cv2.resize(rgb, (size[1], size[0]), interpolation=cv2.INTER_AREA))[None].to(device)
        kps, scores, mask, _ = predict_batch(model, x, layout, cfg["multi_person"], cfg.get("decode_threshold", 0.1))
        kp = kps[0].copy()
        kp[..., 0] = (kp[..., 0] + 0.5) * w / size[1] - 0.5
        kp[..., 1] = (kp[..., 1] + 0.5) * h / size[0] - 0.5
        masks = np.zeros((0, h, w), np.uint8)
        if mask is not None:
            masks = np.stack([cv2.resize(m, (w, h)) > 0.5 for m in mask[0]]).astype(np.uint8)
        pic = draw_sample(Sample(rgb, kp, masks), layout, size=min(h, 512), pafs=False)
        cv2.imwrite(str(out / (f.stem + ".png")), cv2.cvtColor(pic, cv2.COLOR_RGB2BGR))
        results.append({"file": f.name, "keypoints": kp.round(2).tolist(), "scores": scores[0].round(4).tolist()})
    atomic_write_json(out / "predictions.json", {"layout": layout.name, "images": results}, indent=1)
    if progress:
        print(f"wrote {len(results)} pictures and predictions.json to {out}")
    return len(results)
