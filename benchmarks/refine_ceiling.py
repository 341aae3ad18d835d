"""A ceiling diagnostic of refine mode on synthetic driver scenes (issue 18): the refiner
trained on true render pairs, the very task ``render-quality`` scores it on, against the same
refiner trained as ``train-gan --mode refine`` trains it (round trips p -> p' -> p and fills).

Only synthetic scenes (``make-data``) have the true image of a new pose, so this is no user
workflow: it asks how much of the refiner's gap to the warp its self-supervised samples cost.
Settings: the light refiner of the README (ngf 16, SPADE width 16, one discriminator scale of
width 32, L1 x 100, lr_g 2e-4, batch 8, 64 px crops, VGG off)::

    python benchmarks/refine_ceiling.py --data D/train --out D/ceiling_true --samples true --minutes 10
    python benchmarks/refine_ceiling.py --data D/train --out D/ceiling_self --samples self --minutes 10
    python benchmarks/refine_ceiling.py --data D/train --out D/ceiling_lossless --samples self-lossless --minutes 10
    posesynth render-quality --data D/synval --renderer warp,refine --gan D/ceiling_true --num 128 --out D/q_true
"""
from __future__ import annotations

import argparse

import numpy as np

from posesynth.augment.refine import RefineCropDataset, _flip, refine_trainer
from posesynth.datasets.crops import crop, crop_box, to_crop
from posesynth.datasets.formats import open_dataset
from posesynth.datasets.geometry import RegionSpec, limb_region
from posesynth.datasets.sample import Sample, label_meta
from posesynth.datasets.synthetic import SceneSpec, redraw_scene
from posesynth.spade.config import GANConfig
from posesynth.spade.trainer import GANTrainer


class Lossless:
    """A make-data source whose images are the scenes drawn again, without the JPEG's loss (as
    render-quality scores them); everything else is the wrapped source's."""

    def __init__(self, source) -> None:
        self.source = source

    def __getattr__(self, name):
        return getattr(self.source, name)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i):
        s = self.source[i]
        return Sample(SceneSpec.from_dict(s.meta["scene"]).render().image, s.keypoints, s.masks, s.image_id,
                      s.file_name, s.meta)


class TruePairs(RefineCropDataset):
    """Training items of the scored task: a synthetic scene at its pose p, warped once to a
    perturbed p' (``W``), and as truth the scene redrawn at the pose the warp drew.  Crop,
    jitter, flip and region as :class:`RefineCropDataset`'s round trips; an image whose arms
    the warp cannot move gives the next image's item."""

    def sample(self, index, epoch):
        rng = np.random.default_rng([self.seed, epoch, index])
        s = self.source[index]
        scene = s.meta["scene"]
        src = SceneSpec.from_dict(scene).render().image      # lossless source, as render-quality uses
        kp = s.keypoints[: self.max_people]
        if not len(kp):
            return None
        new = self.perturber(kp, src.shape[:2], rng, s.file_name)
        box = crop_box(kp, new, self.layout, self.region, self.margin)
        if box is None:
            return None
        box = self.jitter(box, rng)
        x0, y0, side = box
        img = crop(src, box, self.size)
        kc, nc = to_crop(kp, box, self.size), to_crop(new, box, self.size)
        hw = (self.size, self.size)
        self.warp.background = None
        w1, a1, h1, drawn = self.warp.render_pose(img, kc, nc)
        region = limb_region(kc[None], drawn[None], self.layout, hw, self.region)[0, 0].numpy()
        region = np.maximum.reduce([region, a1, h1.astype(np.float32)])
        if not (region > 0).any() or np.array_equal(drawn[..., :2], kc[..., :2]):
            return None
        full = np.array(drawn, np.float32, copy=True)          # crop pixels -> image pixels
        k = side / self.size
        full[..., 0] = (full[..., 0] + 0.5) * k - 0.5 + x0
        full[..., 1] = (full[..., 1] + 0.5) * k - 0.5 + y0
        full[..., :2] = np.where((drawn[..., :2] == kc[..., :2]), kp[..., :2], full[..., :2])  # unmoved: exact
        rest = s.keypoints[self.max_people:]   # people beyond max_people keep their pose
        g = redraw_scene(scene, np.concatenate([full, rest]) if len(rest) else full)
        truth = crop(g.image, box, self.size)
        masks = np.stack([crop(m, box, self.size, 0) for m in g.masks]) if len(g.masks) else \
            np.zeros((0, *hw), np.uint8)
        warped, tk = w1, drawn
        flipped = self.flip and rng.random() < 0.5
        if flipped:
            truth, masks = truth[:, ::-1].copy(), masks[:, :, ::-1].copy()
            warped, region = warped[:, ::-1].copy(), region[:, ::-1].copy()
            tk = _flip(tk, self.layout, self.size)
        out = self.item(Sample(truth, tk, masks, meta=label_meta(s)), warped, region, box, flipped)
        self.sample_counts["round trip"] += 1
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="make-data scenes (they record their scene)")
    ap.add_argument("--out", required=True, help="the run folder (a refine-mode run that render-quality loads)")
    ap.add_argument("--samples", choices=("true", "self", "self-lossless"), default="true",
                    help="true: single warps with the redrawn truth (lossless); self: train-gan's round trips and "
                         "fills of the JPEG images; self-lossless: the same of the scenes drawn again")
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    cfg = GANConfig(mode="refine", data=a.data, ngf=16, spade_hidden=16, ndf=32, num_d=1, lambda_l1=100, lr_g=2e-4,
                    batch_size=8, crop_size=64, steps=1000000, time_limit_min=a.minutes, vgg="off", seed=a.seed)
    source = open_dataset(a.data)
    if a.samples != "true":
        refine_trainer(cfg, a.out, source=Lossless(source) if a.samples == "self-lossless" else source).fit()
        return
    cfg.validate()
    if "scene" not in (source[0].meta or {}):
        raise SystemExit(f"{a.data}: not make-data scenes (no recorded scene to redraw)")
    ds = TruePairs(source, cfg.crop_size, cfg.crop_margin, cfg.fill_share, cfg.posemaps,
                   RegionSpec(radius=cfg.region_radius), seed=cfg.seed, flip=cfg.augment)
    GANTrainer(cfg, a.out, source=source, dataset=ds).fit()


if __name__ == "__main__":
    main()
