"""Feature matching's real targets in the generator's step: computed apart without a graph
(what the trainer does, :func:`posesynth.spade.discriminator.discriminate` with
``targets_only``) against one discriminator call on fake and real together (NVlabs), in a
whole ``GANTrainer.train_step``.

Paired steps, alternating in one process (timings on a loaded 2-core machine vary by 30% and
more, so compare the ratio of each pair): a full-frame SPADE step and the light refiner's step
(bench_refine.py's rows).

    python benchmarks/bench_d_targets.py [--pairs 8] [--ngf 16] [--batch 4]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from bench_refine import _batch, _trainer
from posesynth.spade import trainer as trainer_module
from posesynth.spade.config import GANConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--ngf", type=int, default=16)
    ap.add_argument("--batch", type=int, default=4)
    a = ap.parse_args()
    apart = trainer_module.GANTrainer._discriminate

    def together(self, b, fake, real, real_graph=True):   # G's step as NVlabs: one call, real half in the graph
        return apart(self, b, fake, real, True)

    common = dict(ngf=a.ngf, batch_size=a.batch, vgg="off", device="cpu")
    rows = {"full-frame spade, 256x128": (GANConfig(mode="full", size=(256, 128), spade_hidden=32, **common), False),
            "refine, 128 px, light": (GANConfig(mode="refine", crop_size=128, spade_hidden=16, ndf=32, num_d=1,
                                                **common), True)}
    print(f"ngf {a.ngf}, batch {a.batch}, fp32 CPU, median of {a.pairs} paired steps")
    print(f"{'step':<28}{'one call s':>11}{'apart s':>9}{'one call / apart':>18}")
    try:
        for name, (cfg, refine) in rows.items():
            t = _trainer(cfg, dataset=[None] if refine else None)
            b = _batch(a.batch, 128, 128, True) if refine else _batch(a.batch, 256, 128, False)
            t.train_step(b)
            times: dict[str, list[float]] = {"one": [], "apart": []}
            for _ in range(a.pairs):
                for kind, fn in (("one", together), ("apart", apart)):
                    trainer_module.GANTrainer._discriminate = fn
                    t0 = time.perf_counter()
                    t.train_step(b)
                    times[kind].append(time.perf_counter() - t0)
            ratio = np.median(np.array(times["one"]) / np.array(times["apart"]))
            print(f"{name:<28}{np.median(times['one']):>11.3f}{np.median(times['apart']):>9.3f}{ratio:>17.3f}x")
    finally:
        trainer_module.GANTrainer._discriminate = apart


if __name__ == "__main__":
    main()
