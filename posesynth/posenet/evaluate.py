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

__all__ = ["evaluate_run", "predict_images", "evaluate_dataset", "nan_reasons"]

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def nan_reasons(res: dict, labelled: np.ndarray, found: np.ndarray, layout) -> dict[str, str]:
    """Why each ``nan`` of an evaluation is one: per keypoint, no labelled point of that joint
    in the data, or none of its labelled points found by the network."""
    out = {}
    for name, n, f in zip(layout.keypoints, labelled, found):
        key = f"px_error/{name}"
        if key in res and res[key] != res[key]:
            out[key] = (f"no labelled {name} in the data" if n == 0 else
                        f"the network found none of the {int(n)} labelled {name} points")
        for key in [k for k in res if k.startswith("PCK@") and k.endswith(f"/{name}") and res[k] != res[k]]:
            out[key] = f"no labelled {name} in the data"
    for key in [k for k in res if k.startswith("PCK@") and k.endswith("/arms") and res[k] != res[k]]:
        out[key] = "no labelled elbow or wrist in the data"
    if res.get("mean_px_error", 0.0) != res.get("mean_px_error", 0.0):
        out["mean_px_error"] = "no labelled point was found by the network"
    return out


@torch.no_grad()
def evaluate_run(run: "str | Path", data: "str | Path", out: "str | Path | None" = None, device: str = "cpu",
                 batch_size: int = 8, multi_person: "bool | None" = None, progress: bool = True,
                 image_dir: "str | Path | None" = None, on_error: str = "skip",
                 out_of_frame: str = "unlabel", checkpoint: str = "best") -> dict[str, float]:
    """Metrics of a trained pose network on a dataset; prints a table and writes JSON.

    ``out``: the JSON (default ``RUN/metrics_<data name>.json``, the name from
    :func:`~posesynth.datasets.multi.data_name`, so each dataset keeps its own file).
    ``checkpoint``: ``best``, ``latest`` or a checkpoint file (see
    :func:`~posesynth.posenet.load.load_posenet`).  ``image_dir``, ``on_error`` and
    ``out_of_frame`` are passed to :func:`~posesynth.datasets.formats.open_dataset`.  A ``nan``
    in the table is explained beside it (and under ``"nan_reasons"`` in the JSON)."""
    from ..datasets.multi import data_name

    model, layout, meta = load_posenet(run, device, checkpoint)
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
    counts: dict[str, np.ndarray] = {}
    res = evaluate_dataset(model, ds, layout, mp, cfg.get("decode_threshold", 0.1), cfg.get("pck_alpha", 0.2),
                           None, batch_size, device, progress=progress, counts=counts)
    res["images"] = len(ds)
    why = nan_reasons(res, counts["labelled"], counts["found"], layout)
    ck = Path(meta["checkpoint_path"])
    if progress:
        print(f"checkpoint {ck.name} of {run} (epoch {meta.get('epoch', '?')}) on {data}")
        print(f"{'metric':<28}{'value':>10}")
        for k, v in res.items():
            line = f"{k:<28}{v:>10.4f}" if isinstance(v, float) else f"{k:<28}{v:>10}"
            print(line + (f"  ({why[k]})" if k in why else ""))
    out = Path(out) if out else Path(run) / f"metrics_{data_name(data)}.json"
    atomic_write_json(out, {"data": str(data), "run": str(run), "checkpoint": str(ck), "epoch": meta.get("epoch"),
                            **res, "nan_reasons": why}, indent=1)
    if progress:
        print(f"wrote {out}")
    return res


def _image_ids(files: "list[Path]", coco_file: "str | Path | None") -> tuple[list[int], int]:
    """COCO image ids for predicted files, and the person category id.  With ``coco_file`` (a
    COCO annotation file), each file's id is the image entry's with the same file name (its last
    part); otherwise a file named by a number (COCO's ``000000000785.jpg``) has that id when all
    are so named (and unique), else the files get 1..N in sorted order."""
    if coco_file:
        import json

        try:
            data = json.loads(Path(coco_file).read_text())
            by_name = {Path(str(im["file_name"])).name: int(im["id"]) for im in data["images"]}
            cats = [c for c in data.get("categories", []) if isinstance(c, dict) and c.get("keypoints")]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise PosesynthError(f"{coco_file}: cannot read image ids from it ({e.__class__.__name__}: {e})") from None
        missing = [f.name for f in files if f.name not in by_name]
        if missing:
            raise PosesynthError(f"{coco_file}: no image entry for {', '.join(missing[:3])}"
                                 f"{f' and {len(missing) - 3} more' if len(missing) > 3 else ''}")
        return [by_name[f.name] for f in files], int(cats[0]["id"]) if cats else 1
    stems = [f.stem for f in files]
    if all(st.isdigit() for st in stems) and len({int(st) for st in stems}) == len(stems):
        return [int(st) for st in stems], 1
    return list(range(1, len(files) + 1)), 1


@torch.no_grad()
def predict_images(run: "str | Path", images: "str | Path", out: "str | Path", device: str = "cpu",
                   progress: bool = True, on_error: str = "skip", multi_person: "bool | None" = None,
                   image_ids: "str | Path | None" = None, checkpoint: str = "best") -> int:
    """Draw the network's predictions on every image of a folder; returns the count.

    Writes ``OUT/<stem>.png`` (the drawings), ``OUT/predictions.json`` (per file: ``image_id``,
    keypoints ``(P, K, 3)`` and person scores) and ``OUT/coco_results.json``, COCO's results
    format (one ``{"image_id", "category_id", "keypoints": [x, y, v] * K, "score"}`` per person,
    pixels of the image), which pycocotools' ``COCO.loadRes`` and mmpose read.  Image ids: see
    :func:`_image_ids` (``image_ids``: a COCO annotation file to take them from).  A point
    predicted outside its image (the letterbox border) gets ``v = 0``; found points ``v = 2``.

    ``multi_person``: decode several people by PAF grouping (default: the run's setting).
    An unreadable or truncated image is skipped with a message (``on_error="skip"``) or
    raises :class:`~posesynth.errors.DatasetError` (``"raise"``)."""
    from ..datasets.reading import out_of_frame_points

    model, layout, meta = load_posenet(run, device, checkpoint)
    cfg = meta["config"]
    size = tuple(cfg["size"])
    mp = cfg["multi_person"] if multi_person is None else multi_person
    folder = Path(images)
    if not folder.is_dir():
        raise PosesynthError(f"{folder}: not a folder of images")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise PosesynthError(f"{folder}: no images ({', '.join(IMAGE_EXTS)})")
    ids, category = _image_ids(files, image_ids)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results, coco = [], []
    outside = 0
    for f, image_id in tqdm(list(zip(files, ids)), desc="predict", disable=not progress):
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
        kps, scores, mask, _ = predict_batch(model, x, layout, mp, cfg.get("decode_threshold", 0.1))
        back = invert_affine(m)
        kp = apply_affine(kps[0], back) if len(kps[0]) else kps[0]
        off = out_of_frame_points(kp, w, h, tol=0.5)          # outside [-0.5, W - 0.5] x [-0.5, H - 0.5]
        outside += int(off.sum())
        kp = kp.copy()
        kp[..., 2] = np.where(off, 0.0, kp[..., 2])
        masks = np.zeros((0, h, w), np.uint8)
        if mask is not None:
            masks = np.stack([cv2.warpAffine(mm, back, (w, h)) > 0.5 for mm in mask[0]]).astype(np.uint8)
        pic = draw_sample(Sample(rgb, kp, masks), layout, size=min(h, 512), pafs=False)
        cv2.imwrite(str(out / (f.stem + ".png")), cv2.cvtColor(pic, cv2.COLOR_RGB2BGR))
        results.append({"file": f.name, "image_id": image_id, "keypoints": kp.round(2).tolist(),
                        "scores": scores[0].round(4).tolist()})
        for p in range(len(kp)):
            if not (kp[p, :, 2] > 0).any():
                continue
            flat = [round(float(v), 2) if i % 3 < 2 else int(v) for i, v in enumerate(kp[p].reshape(-1))]
            coco.append({"image_id": image_id, "category_id": category, "keypoints": flat,
                         "score": round(float(scores[0][p]), 4)})
    atomic_write_json(out / "predictions.json", {"layout": layout.name, "images": results}, indent=1)
    atomic_write_json(out / "coco_results.json", coco)
    if progress:
        print(f"wrote {len(results)} pictures, predictions.json and coco_results.json ({len(coco)} people, COCO "
              f"results format) to {out}" + (f"; {outside} points predicted outside their image marked v=0"
                                             if outside else ""))
    return len(results)


@torch.no_grad()
def evaluate_dataset(model: torch.nn.Module, dataset: PoseMapDataset, layout, multi_person: bool = False,
                     threshold: float = 0.1, pck_alpha: float = 0.2, weights: "PoseLossWeights | None" = None,
                     batch_size: int = 8, device: "str | torch.device" = "cpu", rank: int = 0, world: int = 1,
                     progress: bool = False, indices: "list[int] | None" = None,
                     counts: "dict[str, np.ndarray] | None" = None) -> dict[str, float]:
    """Loss (in the network's frame, when ``weights`` are given) and metrics (in each image's own
    frame) of ``model`` on ``dataset`` (built with ``with_original=True``).

    Under data parallelism each rank scores every ``world``-th item and the results are
    combined, so every rank returns the figures of the whole dataset.  ``counts``, when given,
    receives ``"labelled"`` and ``"found"``: ``(K,)`` labelled keypoints per joint and those
    the network found (what a per-keypoint error is averaged over).
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
        keys = [k for k in ("image", "heatmaps", "pafs", "masks", "mask_valid") if k in items[0]]
        batch = {k: torch.stack([it[k] for it in items]).to(dev) for k in keys}
        kps, scores, mask, raw = predict_batch(model, batch["image"], layout, multi_person, threshold)
        if weights is not None:
            _, parts = pose_loss(tuple(r.float() if r is not None else None for r in raw), batch, weights)
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v * len(items)
        n += len(items)
        mgt = batch["masks"].cpu().numpy()
        labelled = (batch["mask_valid"] > 0).cpu().numpy() if "mask_valid" in batch else \
            np.ones((len(items), mgt.shape[1]), bool)
        for i, it in enumerate(items):
            back = invert_affine(it["to_input"].numpy())
            pred = apply_affine(kps[i], back) if len(kps[i]) else kps[i]
            metrics.add(it["orig_keypoints"].numpy(), pred, scores[i], tuple(int(v) for v in it["orig_size"]),
                        mask[i][labelled[i]] if mask is not None and labelled[i].any() else None,
                        mgt[i][labelled[i]] if mask is not None and labelled[i].any() else None,
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
    if counts is not None:
        counts["labelled"], counts["found"] = metrics.counted.copy(), metrics.found.copy()
    return out
