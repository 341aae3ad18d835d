"""Run under ``torchrun --nproc_per_node=2`` by tests/test_distributed.py (gloo on CPU).

One short pose-network training with the warp renderer mixing half of every batch, where
rank 1 sees a non-finite image at step 0; then validation metrics over both ranks.  Each rank
writes what it rendered and measured to ``OUT/rank{r}.json``.
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch

from posesynth.datasets.layouts import DRIVER9
from posesynth.datasets.synthetic import render_scene, scene_rng
from posesynth.augment.training import AugmentedPoseConfig, build_pose_trainer


class Scenes:
    layout = DRIVER9

    def __init__(self, seed, n):
        self.s = [render_scene(scene_rng(seed, i), 64, "narrow", 0.3) for i in range(n)]

    def __len__(self):
        return len(self.s)

    def __getitem__(self, i):
        return self.s[i]


def main(out: Path) -> None:
    torch.set_num_threads(1)
    cfg = AugmentedPoseConfig(size=(64, 64), backbone="pvt_v2_b0", pretrained="none", heads="small", epochs=1,
                              steps_per_epoch=3, batch_size=2, device="auto", renderer="warp", seed=3,
                              multi_person=True)
    t = build_pose_trainer(cfg, out / "run", source=Scenes(31, 8), val_source=Scenes(32, 6), progress=False)
    mixer = t.batch_transform
    seen = []

    def hook(batch, step):
        b = mixer(batch, step)
        if t.rank == 1 and step == 0:
            b["image"][0] = float("nan")   # a NaN on one rank only
        seen.append({"step": step, "replaced": b["replaced"].tolist(),
                     "keypoints": b["keypoints"][b["replaced"]].tolist()})
        return b

    t.batch_transform = hook
    t.fit()
    val = t.validate()
    (out / f"rank{t.rank}.json").write_text(json.dumps({
        "rank": t.rank, "world": t.world, "device": str(t.device), "backend": torch.distributed.get_backend(),
        "seen": seen, "skipped": t.skipped_steps, "val": {k: v for k, v in val.items() if np.isfinite(v)},
        "epochs": t.epoch, "mixer_seed": mixer.seed}))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
