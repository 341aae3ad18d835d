"""``make demo``: the main job, end to end on a fresh machine with no downloads."""
from __future__ import annotations

import time
from pathlib import Path

__all__ = ["run_demo"]


def run_demo(out: Path, quick: bool = False) -> None:
    """Make a small synthetic driver dataset (a narrow-pose training split and a wide-pose
    held-out split) and draw both, into ``out``."""
    import cv2

    from .datasets.formats import open_dataset
    from .datasets.make_data import make_synthetic_dataset
    from .datasets.visualize import make_grid

    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    n_train, n_val, size = (16, 8, 128) if quick else (128, 64, 256)
    print(f"[demo 1/2] synthetic driver data: {n_train} training (narrow poses), {n_val} held-out (wide poses)")
    make_synthetic_dataset(out / "data" / "train", n_train, seed=0, size=size, pose_range="narrow")
    make_synthetic_dataset(out / "data" / "val", n_val, seed=1, size=size, pose_range="wide")
    print("[demo 2/2] drawing the datasets")
    for split in ("train", "val"):
        ds = open_dataset(out / "data" / split)
        grid = make_grid([ds[i] for i in range(min(8, len(ds)))], ds.layout, cols=4, cell=192)
        cv2.imwrite(str(out / f"{split}_grid.png"), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
    print(f"demo done in {time.perf_counter() - t0:.0f} s: datasets in {out / 'data'}, "
          f"pictures in {out / 'train_grid.png'} and {out / 'val_grid.png'}")
