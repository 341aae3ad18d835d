from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT.parent / "shared" / "fixtures"


@pytest.fixture
def fixtures() -> Path:
    """The real test data in ../shared/fixtures (skips where it is absent)."""
    if not (FIXTURES / "README.md").exists():
        pytest.skip(f"real fixtures not found at {FIXTURES} (the project's ../shared/fixtures)")
    return FIXTURES


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def check_saved_average():
    """``check(saved, snaps, decay, name, train_name)``: a checkpoint's ``name`` tensors are the
    moving average written out by hand here (``e_{n+1} = d_n e_n + (1 - d_n) w_{n+1}``,
    ``d_n = min(decay, (1 + n) / (10 + n))``) of ``snaps``, the trained weights before the
    first step and after each one, and its ``train_name`` tensors the last snapshot; returns
    the average."""
    import torch

    def check(saved, snaps, decay, name, train_name):
        avg = dict(snaps[0])
        for n, w in enumerate(snaps[1:]):
            d = min(decay, (1 + n) / (10 + n))
            avg = {k: d * avg[k] + (1 - d) * w[k] for k in avg}
        for k, v in avg.items():
            assert torch.allclose(saved[f"{name}.{k}"], v, atol=1e-6), k
            assert torch.equal(saved[f"{train_name}.{k}"], snaps[-1][k]), k
        return avg

    return check


def run_cli(*args: str):
    """``posesynth ARGS`` in this process (``posesynth.cli.main``): what a subprocess would
    give, ``returncode``, ``stdout`` and ``stderr`` (the log lines included), without the 3-4 s
    of a new interpreter importing torch.  A few tests keep a real subprocess for what only a
    process shows (the exit status of ``python -m posesynth``, the demo end to end)."""
    import contextlib
    import io
    import logging
    from types import SimpleNamespace

    from posesynth.cli import main

    out, err = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(err)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)   # before main(): its basicConfig then adds no handler of its own
    root.setLevel(logging.INFO)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main([str(a) for a in args])
            except SystemExit as e:   # argparse's own errors and --help
                code = e.code if isinstance(e.code, int) else 2
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    return SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())
