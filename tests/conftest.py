"""Shared fixtures."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def real_data_root() -> Path:
    """The real datasets: $SPARSENET_DATA, else ../shared/data beside the repository.

    Skips when no MNIST copy is there, so `pytest -m realdata` is safe anywhere."""
    root = Path(os.environ.get("SPARSENET_DATA") or REPO.parent / "shared" / "data").resolve()
    if not (root / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file():
        pytest.skip(f"no MNIST copy in {root}")
    return root
