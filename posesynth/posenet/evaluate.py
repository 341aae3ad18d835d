"""Evaluation (``posesynth evaluate``, the trainer's validation, the experiment's test figures)
and ``posesynth predict``.

Predictions are mapped back to each image's own frame before they are scored (the inverse of
the letterbox or stretch that brought the image to the network input), so pixel errors carry
no aspect distortion.  PCK counts every labelled keypoint of every labelled person, each
matched to a predicted person by OKS, so perfect predictions score exactly 1.0 on images with
several people."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from ..datasets.formats import open_dataset
from ..datasets.posemaps import PoseMapSpec
from ..datasets.reading import read_image
from ..datasets.sample import Sample
from ..datasets.torch_dataset import PoseMapDataset, image_to_tensor
from ..datasets.visualize import draw_sample
from ..errors import DatasetError, PosesynthError
from ..io import atomic_write_json
from ..datasets.transforms import apply_affine, fit_matrix, invert_affine
from .load import load_posenet, predict_batch
from .losses import PoseLossWeights, pose_loss
from .metrics import PoseMetrics

__all__ = ["evaluate_run", "predict_images", "evaluate_dataset"]

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@torch.no_grad()
def evaluate_run(run: "str | Path", data: "str | Path", out: "str | Path | None" = None, device: str = "cpu",
                 batch_size: int = 8, multi_person: "bool | None" = None, progress: bool = True,
                 image_dir: "str | Path | None" = None, on_error: str = "skip",
                 out_of_frame: str = "unlabel") -> dict[str, float]:
    """Metrics of a trained pose network on a dataset; prints a table and writes JSON.

    ``image_dir``, ``on_error`` and ``out_of_frame`` are passed to
    :func:`~posesynth.datasets.formats.open_dataset`."""
    model, layout, meta = load_posenet(run, device)
    cfg = meta["config"]
    size = tuple(cfg["size"])
    src = open_dataset(data, layout=layout, on_error=on_error, image_dir=image_dir, out_of_frame=out_of_frame)
    if src.layout.keypoints != layout.keypoints:
        raise PosesynthError(f"{run} predicts layout '{layout.name}', {data} is '{src.layout.name}'")
    from ..datasets.torch_dataset import max_people_of

    spec = PoseMapSpec.from_dict(meta["posemaps"])
    ds = PoseMapDataset(src, size, None, spec.stride, spec, max(max_people_of(src), 1), with_maps=False,
                        fit=cfg.get("fit", "stretch"), with_original=True)
    mp = cfg["multi_person"] if multi_person is None else multi_person
    res = evaluate_dataset(model, ds, layout, mp, cfg.get("decode_threshold", 0.1), cfg.get("pck_alpha", 0.2),
                           None, batch_size, device, progress=progress)
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
                   progress: bool = True, on_error: str = "skip") -> int:
    """Draw the network's predictions on every image of a folder; returns the count.

    An unreadable or truncated image is skipped with a message (``on_error="skip"``) or
    raises :class:`~posesynth.errors.DatasetError` (``"raise"``)."""
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
        try:
            rgb = read_image(f)
        except DatasetError as err:
            if on_error == "raise":
                raise
            print(f"skipping {err}")
            continue
        h, w = rgb.shape[:2]
        m = fit_matrix((h, w), size, cfg.get("fit", "stretch"))
        x = image_to_tensor(cv2.warpAffine(rgb, m, (size[1], size[0]), flags=cv2.INTER_LINEAR))[None].to(device)
        kps, scores, mask, _ = predict_batch(model, x, layout, cfg["multi_person"], cfg.get("decode_threshold", 0.1))
        back = invert_affine(m)
        kp = apply_affine(kps[0], back) if len(kps[0]) else kps[0]
        masks = np.zeros((0, h, w), np.uint8)
        if mask is not None:
            masks = np.stack([cv2.warpAffine(mm, back, (w, h)) > 0.5 for mm in mask[0]]).astype(np.uint8)
        pic = draw_sample(Sample(rgb, kp, masks), layout, size=min(h, 512), pafs=False)
        cv2.imwrite(str(out / (f.stem + ".png")), cv2.cvtColor(pic, cv2.COLOR_RGB2BGR))
        results.append({"file": f.name, "keypoints": kp.round(2).tolist(), "scores": scores[0].round(4).tolist()})
    atomic_write_json(out / "predictions.json", {"layout": layout.name, "images": results}, indent=1)
    if progress:
        print(f"wrote {len(results)} pictures and predictions.json to {out}")
    return len(results)


@torch.no_grad()
def evaluate_dataset(model: torch.nn.Module, dataset: PoseMapDataset, layout, multi_person: bool = False,
                     threshold: float = 0.1, pck_alpha: float = 0.2, weights: "PoseLossWeights | None" = None,
                     batch_size: int = 8, device: "str | torch.device" = "cpu", rank: int = 0, world: int = 1,
                     progress: bool = False, indices: "list[int] | None" = None) -> dict[str, float]:
    """Loss (in the network's frame, when ``weights`` are given) and metrics (in each image's own
    frame) of ``model`` on ``dataset`` (built with ``with_original=True``).

    Under data parallelism each rank scores every ``world``-th item and the results are
    combined, so every rank returns the figures of the whole dataset.
    """
    was = model.training
    model.eval()
    metrics = PoseMetrics(layout, pck_alpha)
    sums: dict[str, float] = {}
    n = 0
    idx = list(indices if indices is not None else range(len(dataset)))[rank::world]
    dev = torch.device(device)
    for s in tqdm(range(0, len(idx), batch_size), desc="evaluate", disable=not progress, leave=False):
        items = [dataset[i] for i in idx[s:s + batch_size]]
        batch = {k: torch.stack([it[k] for it in items]).to(dev) for k in ("image", "heatmaps", "pafs", "masks")}
        kps, scores, mask, raw = predict_batch(model, batch["image"], layout, multi_person, threshold)
        if weights is not None:
            _, parts = pose_loss(tuple(r.float() if r is not None else None for r in raw), batch, weights)
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v * len(items)
        n += len(items)
        mgt = batch["masks"].cpu().numpy()
        for i, it in enumerate(items):
            back = invert_affine(it["to_input"].numpy())
            pred = apply_affine(kps[i], back) if len(kps[i]) else kps[i]
            metrics.add(it["orig_keypoints"].numpy(), pred, scores[i], tuple(int(v) for v in it["orig_size"]),
                        mask[i] if mask is not None else None, mgt[i] if mask is not None else None,
                        areas=it["orig_areas"].numpy() if "orig_areas" in it else None)
    model.train(was)
    if world > 1:
        import torch.distributed as dist

        gathered: list = [None] * world
        dist.all_gather_object(gathered, (sums, n, metrics))
        sums, n = {}, 0
        merged = PoseMetrics(layout, pck_alpha)
        for s_, n_, m_ in gathered:
            for k, v in s_.items():
                sums[k] = sums.get(k, 0.0) + v
            n += n_
            merged.merge(m_)
        metrics = merged
    out = {k: v / max(n, 1) for k, v in sums.items()}
    out.update(metrics.result())
    return out
