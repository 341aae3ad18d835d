"""SPADE GAN speed: seconds per training iteration, peak memory, generator inference.

Each configuration runs in its own process (peak memory = that process's max RSS).
Rows: posesynth at 128/256 px, ngf 32/64, batch 2, without and with the VGG perceptual loss
(VGG19 with random weights when no pretrained file is present: same cost), and the
NVlabs-structured reference (benchmarks/nvlabs_reference.py: hinge + feature matching, no
VGG, instance-norm SPADE, D step regenerating the fake) at the same settings.

    python benchmarks/bench_gan.py [--iters 3] [--sizes 128,256] [--ngf 32,64]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def worker(kind: str, size: int, ngf: int, vgg: bool, iters: int, batch: int) -> dict:
    import resource

    import torch

    sys.path.insert(0, str(HERE))
    torch.manual_seed(0)
    maps = torch.rand(batch, 26, size, size)
    real = torch.rand(batch, 3, size, size) * 2 - 1
    if kind == "nvlabs":
        from nvlabs_reference import RefMultiscaleDiscriminator, RefSPADEGenerator, reference_train_step

        G, D = RefSPADEGenerator(26, size, ngf), RefMultiscaleDiscriminator(29)
        og = torch.optim.Adam(G.parameters(), 1e-4, betas=(0.0, 0.9))
        od = torch.optim.Adam(D.parameters(), 4e-4, betas=(0.0, 0.9))
        step = lambda: reference_train_step(G, D, og, od, maps, real)  # noqa: E731
        infer_g = G
    else:
        from posesynth.spade.trainer import GANConfig, GANTrainer

        class Src:  # no data needed: the step is fed directly
            from posesynth.datasets.layouts import DRIVER9 as layout

            def __len__(self):
                return 1

        # no L1: the same losses as the NVlabs-structured reference (hinge + feature matching)
        cfg = GANConfig(size=(size, size), ngf=ngf, batch_size=batch, vgg="off", lambda_l1=0.0)
        import tempfile

        tr = GANTrainer(cfg, tempfile.mkdtemp(), source=Src(), progress=False)
        if vgg:
            from posesynth.spade.losses import VGGLoss, vgg19_features

            tr.vgg = VGGLoss(vgg19_features())
        batch_d = {"maps": maps, "image": real}
        step = lambda: tr.train_step(batch_d)  # noqa: E731
        infer_g = tr.G
    step()
    t = time.perf_counter()
    for _ in range(iters):
        step()
    sec = (time.perf_counter() - t) / iters
    infer_g.eval()
    with torch.inference_mode():
        infer_g(maps)
        t = time.perf_counter()
        for _ in range(iters):
            infer_g(maps)
        ms = (time.perf_counter() - t) / iters / batch * 1e3
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"s_per_iter": sec, "infer_ms_per_image": ms, "peak_mib": peak}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--sizes", default="128,256")
    ap.add_argument("--ngf", default="32,64")
    ap.add_argument("--no-vgg-rows", action="store_true")
    ap.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        kind, size, ngf, vgg = a.worker
        print(json.dumps(worker(kind, int(size), int(ngf), vgg == "1", a.iters, a.batch)))
        return
    configs = []
    for size in map(int, a.sizes.split(",")):
        for ngf in map(int, a.ngf.split(",")):
            configs.append(("nvlabs", size, ngf, False))
            configs.append(("posesynth", size, ngf, False))
            if not a.no_vgg_rows:
                configs.append(("posesynth", size, ngf, True))
    print(f"batch {a.batch}, 26 input channels, instance-norm SPADE, hinge + feature matching, fp32 CPU, "
          f"{a.iters} timed iterations")
    print(f"{'model':<12}{'px':>5}{'ngf':>5}{'VGG':>5}{'s/iteration':>13}{'speed-up':>10}"
          f"{'peak MiB':>10}{'infer ms/img':>14}")
    base: dict = {}
    for kind, size, ngf, vgg in configs:
        r = subprocess.run([sys.executable, __file__, "--iters", str(a.iters), "--batch", str(a.batch),
                            "--worker", kind, str(size), str(ngf), "1" if vgg else "0"],
                           capture_output=True, text=True)
        if r.returncode:
            print(f"{kind} {size} {ngf}: failed\n{r.stderr[-2000:]}")
            continue
        res = json.loads(r.stdout.strip().splitlines()[-1])
        if kind == "nvlabs":
            base[(size, ngf)] = res
        ref = base.get((size, ngf))
        sp = f"{ref['s_per_iter'] / res['s_per_iter']:.2f}x" if ref and kind != "nvlabs" else "-"
        print(f"{kind:<12}{size:>5}{ngf:>5}{'yes' if vgg else 'no':>5}{res['s_per_iter']:>13.2f}{sp:>10}"
              f"{res['peak_mib']:>10.0f}{res['infer_ms_per_image']:>14.0f}", flush=True)


if __name__ == "__main__":
    main()
