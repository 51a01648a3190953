"""Shared fixtures."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def cli_env(cwd: Path, env: dict | None = None) -> dict:
    """The environment of a command under test: SPARSENET_DATA points at an empty folder in
    `cwd`, so nothing reads the real datasets by accident."""
    return {**os.environ, "SPARSENET_DATA": str(cwd / "no-data-here"), **(env or {})}


def run_sparsenet(
    *args: str, cwd: Path, env: dict | None = None, timeout: float = 600
) -> subprocess.CompletedProcess:
    """`sparsenet ARGS` as a user types it, in `cwd`, output captured (environment: cli_env)."""
    return subprocess.run(
        [sys.executable, "-m", "sparsenet", *args],
        cwd=cwd,
        env=cli_env(cwd, env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def sparsenet_cli():
    """The command line in a subprocess: sparsenet_cli(*overrides, cwd=..., env=...)."""
    return run_sparsenet


@pytest.fixture
def real_data_root() -> Path:
    """The real datasets: $SPARSENET_DATA, else ../shared/data beside the repository.

    Skips when no MNIST copy is there, so `pytest -m realdata` is safe anywhere."""
    root = Path(os.environ.get("SPARSENET_DATA") or REPO.parent / "shared" / "data").resolve()
    if not (root / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file():
        pytest.skip(f"no MNIST copy in {root}")
    return root
