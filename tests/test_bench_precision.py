"""The GPU precision benchmark (issue 11) runs end to end at toy sizes on the CPU, so it is
ready for a GPU machine: one row per measurement, fp32 only on the CPU, no peak memory there."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_bench_precision_smoke(monkeypatch, capsys):
    args = ["--device", "cpu", "--posenet-size", "64", "--posenet-batch", "2", "--gan-size", "64", "--gan-ngf", "8",
            "--gan-batch", "2", "--whole-size", "64", "--whole-batch", "2", "--iters", "1"]
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_precision.py"), *args],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [line.split() for line in r.stdout.splitlines() if line.rstrip().endswith(" -")]
    assert [row[0] for row in rows] == ["pose", "GAN", "augmented", "augmented", "augmented", "generation,"]
    assert [row[6] for row in rows[2:5]] == ["GAN", "warp", "refine"]   # the augmented step per renderer
    # precision, img/s, s/step, vs fp32, first GiB, peak GiB
    assert all(row[-6] == "fp32" and row[-3] == "1.00x" and float(row[-5]) > 0 and row[-2:] == ["-", "-"]
               for row in rows)
    # --rows picks rows by kind, in the table's order (in this process: the script ran as one above)
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import bench_precision

    monkeypatch.setattr(sys, "argv", ["bench_precision.py", *args, "--rows", "gan,generation", "--whole-renderers",
                                      "warp"])
    bench_precision.main()
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.rstrip().endswith(" -")]
    assert [row[0] for row in rows] == ["GAN", "generation,"]
    monkeypatch.setattr(sys, "argv", ["bench_precision.py", "--rows", "gans"])
    with pytest.raises(SystemExit) as e:
        bench_precision.main()
    assert e.value.code == 2 and "choose from posenet, gan, whole, generation" in capsys.readouterr().err


def test_bench_precision_bf16_rows_run(monkeypatch, capsys):
    """The reduced-precision code paths (autocast, the trainer's precision, the cast generator)
    have no dtype or device mistake: bf16 allowed on the CPU for this test only (Precision
    refuses it there because it is slow; its own constructor runs), every row runs and
    generation stays close to fp32."""
    import posesynth.runs as runs

    monkeypatch.setattr(runs.Precision, "reduced_on_cpu", True)
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import bench_precision

    monkeypatch.setattr(sys, "argv", ["bench_precision.py", "--device", "cpu", "--precisions", "fp32,bf16",
                                      "--posenet-size", "64", "--posenet-batch", "2", "--gan-size", "64",
                                      "--gan-ngf", "8", "--gan-batch", "2", "--whole-size", "64", "--whole-batch", "2",
                                      "--whole-renderers", "gan", "--iters", "1"])
    bench_precision.main()
    rows = [line for line in capsys.readouterr().out.splitlines() if " bf16 " in line]
    assert len(rows) == 4
    psnr = float(rows[-1].split("PSNR vs fp32")[1].split()[0])
    assert psnr > 30, rows[-1]
