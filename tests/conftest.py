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
