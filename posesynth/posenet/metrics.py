"""Pose metrics: COCO OKS AP/AR (pycocotools COCOeval with the layout's sigmas), PCK relative
to torso size, mean pixel error per keypoint, and mask IoU/Dice."""
from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

from ..datasets.geometry import arm_chains, torso_size
from ..datasets.layouts import KeypointLayout

__all__ = ["coco_oks", "torso_size", "PoseMetrics", "oks_matrix", "image_pck", "match_people"]


def _area(kp: np.ndarray, area: "float | None" = None) -> float:
    """A person's OKS scale ``s^2`` in pixels^2: the annotation's COCO ``area`` when it is a
    positive finite number, else the area of the tight box around the labelled keypoints
    (1 with fewer than two labelled keypoints, the smallest box there is)."""
    if area is not None and np.isfinite(area) and area > 0:
        return float(area)
    vis = kp[:, 2] > 0
    if vis.sum() < 2:
        return 1.0
    lo, hi = kp[vis, :2].min(0), kp[vis, :2].max(0)
    return float(max((hi - lo).prod(), 1.0))


def _areas_of(gt: np.ndarray, areas: "np.ndarray | None") -> np.ndarray:
    """``(G,)`` OKS areas of the people ``gt (G, K, 3)``; ``areas`` (``(G,)``, NaN = unknown) the
    annotations' own."""
    given = np.full(len(gt), np.nan) if areas is None else np.asarray(areas, np.float64).reshape(-1)
    return np.array([_area(g, a) for g, a in zip(gt, given)], np.float64)


def oks_matrix(gt: np.ndarray, pred: np.ndarray, sigmas, areas: np.ndarray) -> np.ndarray:
    """``(G, D)`` object keypoint similarity between ground-truth and predicted people."""
    if len(gt) == 0 or len(pred) == 0:
        return np.zeros((len(gt), len(pred)))
    var = (2 * np.asarray(sigmas)) ** 2
    d2 = ((gt[:, None, :, :2] - pred[None, :, :, :2]) ** 2).sum(-1)       # (G, D, K)
    e = d2 / var / (areas[:, None, None] + np.spacing(1)) / 2
    vis = gt[:, None, :, 2] > 0
    return np.where(vis.any(-1), (np.exp(-e) * vis).sum(-1) / np.maximum(vis.sum(-1), 1), 0.0)


def coco_oks(gts: list[np.ndarray], preds: list[np.ndarray], scores: list[np.ndarray], layout: KeypointLayout,
             sizes: list[tuple[int, int]], gt_areas: "list[np.ndarray | None] | None" = None) -> dict[str, float]:
    """COCO keypoint AP/AR through pycocotools' COCOeval with ``layout.sigmas``.

    Args:
        gts, preds: per image, ``(P, K, 3)`` in input pixels.
        scores: per image, ``(P_pred,)`` confidence of each predicted person.
        sizes: per image ``(H, W)``.
        gt_areas: per image, ``(P,)`` each ground-truth person's annotation ``area`` in pixels^2
            (COCO's segmentation area, the OKS scale ``s^2``), NaN where the file has none; those
            people (and every person when ``gt_areas`` is None) get the fallback of
            :func:`_area`, the tight box of their labelled keypoints.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, anns, dets = [], [], []
    for i, (g, p, s, hw) in enumerate(zip(gts, preds, scores, sizes)):
        images.append({"id": i + 1, "height": int(hw[0]), "width": int(hw[1]), "file_name": f"{i}"})
        areas = _areas_of(g, gt_areas[i] if gt_areas is not None else None)
        for j, kp in enumerate(g):
            n = int((kp[:, 2] > 0).sum())
            vis = kp[:, 2] > 0
            bb = [*kp[vis, :2].min(0), *(kp[vis, :2].max(0) - kp[vis, :2].min(0))] if vis.any() else [0, 0, 0, 0]
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": 1, "keypoints": kp.reshape(-1).tolist(),
                         "num_keypoints": n, "area": float(areas[j]), "bbox": [float(v) for v in bb], "iscrowd": 0})
        for kp, sc in zip(p, s):
            k = kp.copy()
            k[:, 2] = 1
            dets.append({"image_id": i + 1, "category_id": 1, "keypoints": k.reshape(-1).tolist(), "score": float(sc)})
    if not any(a["num_keypoints"] for a in anns):
        return {"AP": float("nan"), "AP50": float("nan"), "AP75": float("nan"), "AR": float("nan")}
    if not dets:
        return {"AP": 0.0, "AP50": 0.0, "AP75": 0.0, "AR": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": images, "annotations": anns, "categories": [
            {"id": 1, "name": "person", "keypoints": list(layout.keypoints),
             "skeleton": [[a + 1, b + 1] for a, b in layout.limbs]}]}
        gt.createIndex()
        dt = gt.loadRes(dets)
        ev = COCOeval(gt, dt, "keypoints")
        ev.params.kpt_oks_sigmas = np.asarray(layout.sigmas, np.float64)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    s = ev.stats
    return {"AP": float(s[0]), "AP50": float(s[1]), "AP75": float(s[2]), "AR": float(s[5])}


def match_people(gt: np.ndarray, pred: np.ndarray, sigmas, areas: "np.ndarray | None" = None) -> dict[int, int]:
    """Ground-truth person -> predicted person, by OKS with linear assignment (each used once);
    ``areas`` ``(G,)`` the annotations' areas (NaN = unknown, see :func:`_area`)."""
    if not len(gt) or not len(pred):
        return {}
    sim = oks_matrix(gt, pred, sigmas, _areas_of(gt, areas))
    rows, cols = linear_sum_assignment(-sim)
    return dict(zip(rows, cols))


def _pck_counts(gt: np.ndarray, pred: np.ndarray, layout: KeypointLayout, alpha: float,
                select: "np.ndarray | None" = None, areas: "np.ndarray | None" = None):
    """Per keypoint: correct, counted, pixel-error sum, found (over every labelled person, and
    only the keypoints ``select`` ``(G, K)`` bool marks, when given)."""
    k = layout.num_keypoints
    correct, counted, err, found = np.zeros(k), np.zeros(k), np.zeros(k), np.zeros(k)
    matched = match_people(gt, pred, layout.sigmas, areas)
    for gi, g in enumerate(gt):
        vis = (g[:, 2] > 0) & (select[gi] if select is not None else True)
        ts = torso_size(g, layout)
        if not np.isfinite(ts) or ts <= 0:
            ts = np.sqrt(_area(g))  # fall back to the person's size
        if gi in matched:
            p = pred[matched[gi]]
            f = p[:, 2] > 0
            d = np.linalg.norm(g[:, :2] - p[:, :2], axis=-1)
            ok = f & (d <= alpha * ts)
            err += np.where(vis & f, d, 0.0)
            found += vis & f
        else:
            ok = np.zeros_like(vis)
        correct += ok & vis
        counted += vis
    return correct, counted, err, found


def image_pck(gt: np.ndarray, pred: np.ndarray, layout: KeypointLayout, alpha: float = 0.2) -> float:
    """PCK@alpha of one image: every labelled keypoint of every labelled person ``gt (G, K, 3)``
    against the matched predicted person of ``pred (D, K, 3)`` (``nan`` without labels)."""
    gt = np.asarray(gt, np.float32)
    gt = gt[(gt[:, :, 2] > 0).any(-1)] if len(gt) else gt
    c, n, _, _ = _pck_counts(gt, np.asarray(pred, np.float32), layout, alpha)
    return float(c.sum() / n.sum()) if n.sum() else float("nan")


@dataclass
class PoseMetrics:
    """Accumulates PCK, per-keypoint pixel error, OKS AP inputs and mask IoU/Dice over a dataset."""

    layout: KeypointLayout
    pck_alpha: float = 0.2
    gts: list = field(default_factory=list)
    preds: list = field(default_factory=list)
    scores: list = field(default_factory=list)
    sizes: list = field(default_factory=list)
    areas: list = field(default_factory=list)
    correct: np.ndarray = None
    counted: np.ndarray = None
    err_sum: np.ndarray = None
    found: np.ndarray = None
    inter: float = 0.0
    union: float = 0.0
    mask_sum: float = 0.0

    def __post_init__(self) -> None:
        k = self.layout.num_keypoints
        self.correct, self.counted, self.err_sum, self.found = np.zeros(k), np.zeros(k), np.zeros(k), np.zeros(k)

    def add(self, gt: np.ndarray, pred: np.ndarray, scores: np.ndarray, size: tuple[int, int],
            mask_prob: "np.ndarray | None" = None, mask_gt: "np.ndarray | None" = None,
            areas: "np.ndarray | None" = None) -> None:
        """One image: ground truth ``(G, K, 3)``, prediction ``(D, K, 3)`` with person scores;
        ``areas`` ``(G,)`` the ground-truth annotations' COCO areas in pixels^2 of this frame
        (NaN where unknown), for OKS."""
        labelled = (gt[:, :, 2] > 0).any(-1) if len(gt) else np.zeros(0, bool)
        a = np.full(len(gt), np.nan) if areas is None else np.asarray(areas, np.float64).reshape(-1)[:len(gt)]
        gt, a = gt[labelled], a[labelled]
        self.gts.append(gt)
        self.preds.append(pred)
        self.scores.append(scores)
        self.sizes.append(size)
        self.areas.append(a)
        c, n, e, f = _pck_counts(gt, pred, self.layout, self.pck_alpha, areas=a)
        self.correct += c
        self.counted += n
        self.err_sum += e
        self.found += f
        if mask_prob is not None and mask_gt is not None:
            pm, gm = mask_prob > 0.5, mask_gt > 0.5
            self.inter += float((pm & gm).sum())
            self.union += float((pm | gm).sum())
            self.mask_sum += float(pm.sum() + gm.sum())

    def merge(self, other: "PoseMetrics") -> None:
        """Add another accumulator's images (e.g. another rank's share)."""
        self.gts += other.gts
        self.preds += other.preds
        self.scores += other.scores
        self.sizes += other.sizes
        self.areas += other.areas
        for a in ("correct", "counted", "err_sum", "found"):
            setattr(self, a, getattr(self, a) + getattr(other, a))
        self.inter += other.inter
        self.union += other.union
        self.mask_sum += other.mask_sum

    def result(self) -> dict[str, float]:
        found = self.found
        key = f"PCK@{self.pck_alpha:g}"
        out = {key: float(self.correct.sum() / max(self.counted.sum(), 1))}
        # per joint, and over the elbows and wrists (the joints the arm renderers move): nan where
        # no such joint is labelled
        for name, c, n in zip(self.layout.keypoints, self.correct, self.counted):
            out[f"{key}/{name}"] = float(c / n) if n else float("nan")
        arms = [j for chain in arm_chains(self.layout) for j in chain[1:]]
        if arms:
            n = self.counted[arms].sum()
            out[f"{key}/arms"] = float(self.correct[arms].sum() / n) if n else float("nan")
        out.update(coco_oks(self.gts, self.preds, self.scores, self.layout, self.sizes, self.areas))
        per_kp = np.where(found > 0, self.err_sum / np.maximum(found, 1), np.nan)
        # nan, not 0, when nothing was found: an error of 0 px would read as perfect
        out["mean_px_error"] = float(self.err_sum.sum() / found.sum()) if found.sum() else float("nan")
        for name, e in zip(self.layout.keypoints, per_kp):
            out[f"px_error/{name}"] = float(e)
        if self.mask_sum > 0 or self.union > 0:
            out["mask_IoU"] = self.inter / max(self.union, 1e-9)
            out["mask_Dice"] = 2 * self.inter / max(self.mask_sum, 1e-9)
        return out
