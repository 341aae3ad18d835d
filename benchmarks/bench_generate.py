"""Generator inference for offline generation: images/s of the training-mode generator
(spectral norm recomputed, autograd on, NCHW), the optimised fp32 path (folded weights,
inference mode, channels-last) and static int8 (CPU), with int8's PSNR against fp32 and
weight sizes.  The 128 px rows add the NVlabs-structured reference (eval, no_grad) run in the
same process, for comparison with the issue's reference (309 / 625 ms/image at ngf 32 / 64).

    python benchmarks/bench_generate.py [--sizes 128,256,384] [--ngf 32,64] [--batch 2] [--iters 2]
"""
from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from posesynth.spade.generator import GeneratorConfig, SPADEGenerator  # noqa: E402
from posesynth.spade.inference import optimize_generator  # noqa: E402


def timed(fn, iters: int) -> float:
    fn()
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t) / iters


def nbytes(model: torch.nn.Module) -> int:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.tell()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="128,256,384")
    ap.add_argument("--ngf", default="32,64")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--iters", type=int, default=2)
    ap.add_argument("--compile", action="store_true", help="add the torch.compile row (compiles for ~40 s per row)")
    a = ap.parse_args()
    b = a.batch
    print(f"batch {b}, 26 input channels, CPU fp32 unless int8, {torch.get_num_threads()} threads")
    print(f"{'px':>4}{'ngf':>5}  {'path':<26}{'ms/image':>10}{'images/s':>10}{'speed-up':>10}{'MB':>8}{'PSNR dB':>9}")
    for size in map(int, a.sizes.split(",")):
        for ngf in map(int, a.ngf.split(",")):
            torch.manual_seed(0)
            g = SPADEGenerator(GeneratorConfig(26, (size, size), ngf))
            maps = torch.rand(b, 26, size, size)
            rows = []
            if size == 128:
                from nvlabs_reference import RefSPADEGenerator

                ref = RefSPADEGenerator(26, size, ngf).eval()
                with torch.no_grad():
                    rows.append(("NVlabs-structured (eval)", timed(lambda: ref(maps), a.iters), None, None))
            g.train()
            rows.append(("training-mode generator", timed(lambda: g(maps), a.iters), nbytes(g), None))
            g.eval()
            with torch.no_grad():
                ref_out = g(maps)
            fast = optimize_generator(g, "cpu", "fp32")
            cl = maps.contiguous(memory_format=torch.channels_last)
            with torch.inference_mode():
                rows.append(("optimised fp32", timed(lambda: fast(cl), a.iters), nbytes(fast), None))
            if a.compile:
                comp = optimize_generator(g, "cpu", "fp32", compile=True)
                with torch.no_grad():
                    comp(cl)  # compiles
                    rows.append(("optimised fp32 + compile", timed(lambda: comp(cl), a.iters), None, None))
            with torch.inference_mode():
                q = optimize_generator(g, "cpu", "int8", calibration=[maps])
                out = q(maps)
                mse = float(((out - ref_out) ** 2).mean())
                psnr = 10 * np.log10(4.0 / max(mse, 1e-12))
                rows.append(("static int8", timed(lambda: q(maps), a.iters), nbytes(q), psnr))
            base = rows[0][1]
            for name, sec, size_b, psnr in rows:
                ms = sec / b * 1e3
                print(f"{size:>4}{ngf:>5}  {name:<26}{ms:>10.0f}{b / sec:>10.2f}{base / sec:>9.2f}x"
                      f"{(size_b or 0) / 1e6:>8.1f}{psnr if psnr else float('nan'):>9.1f}", flush=True)


if __name__ == "__main__":
    main()
