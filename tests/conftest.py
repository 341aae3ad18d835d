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
