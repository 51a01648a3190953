"""Shared fixtures."""

import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import DictConfig
from torch import nn

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


def compose_config(*overrides: str) -> DictConfig:
    """The config `sparsenet OVERRIDES` would run, composed in-process (resolvers registered)."""
    from sparsenet.pipeline.resume import register_resolvers

    register_resolvers()
    with initialize_config_module(config_module="sparsenet.conf", version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


@pytest.fixture(scope="session")
def compose_cfg():
    """compose_cfg(*overrides): the composed config (see compose_config)."""
    return compose_config


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small tensors: one intra-op thread is as fast, and it does not stall (OpenMP barriers)
    when other processes share the CPU. Modules opt in with
    `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- a hand-written MNIST copy in torchvision's layout ----------------------------------------
MNIST_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def write_idx(folder: Path, train: bool, images: np.ndarray, labels: np.ndarray) -> None:
    """IDX format: magic 2051 (uint8, 3 dims) / 2049 (uint8, 1 dim), big-endian int32 dims."""
    folder.mkdir(parents=True, exist_ok=True)
    image_file, label_file = MNIST_FILES[train]
    n, rows, cols = images.shape
    (folder / image_file).write_bytes(
        struct.pack(">IIII", 2051, n, rows, cols) + images.astype(np.uint8).tobytes()
    )
    (folder / label_file).write_bytes(
        struct.pack(">II", 2049, n) + labels.astype(np.uint8).tobytes()
    )


def mnist_images(n: int, offset: int) -> np.ndarray:
    return ((np.arange(n * 28 * 28).reshape(n, 28, 28) * 7 + offset) % 256).astype(np.uint8)


@pytest.fixture
def mnist_root(tmp_path: Path) -> Path:
    """12 train / 5 test images in <root>/MNIST/raw; train image 0 starts with pixels 255, 0, 128."""
    train = mnist_images(12, 3)
    train[0, 0, :3] = (255, 0, 128)
    write_idx(tmp_path / "MNIST" / "raw", True, train, np.arange(12) % 10)
    write_idx(tmp_path / "MNIST" / "raw", False, mnist_images(5, 1), np.array([9, 8, 7, 6, 5]))
    return tmp_path


# Synthetic data, small enough that a run finishes in seconds (and that one which wrongly got
# past validation is caught by a "nothing written" check rather than hanging the suite).
QUICK_SMOKE = (
    "experiment=smoke",
    "train.progress=false",
    "dataset.train_size=64",
    "dataset.test_size=32",
    "report.latency_repeats=1",
    "report.latency_batch_size=4",
    "prune.calibration_samples=16",
)


@pytest.fixture(scope="session")
def quick_smoke() -> tuple[str, ...]:
    """Overrides of a seconds-long smoke run (QUICK_SMOKE)."""
    return QUICK_SMOKE


# --- small networks and states shared by several test modules ------------------------------
def tiny_conv_net(seed: int = 0) -> nn.Sequential:
    """conv1 (1 -> 2 filters, 3x3) -> BatchNorm -> ReLU -> conv2 (2 -> 3, 3x3) -> flatten ->
    fc (12 -> 2), for 1x6x6 inputs: conv1 gives 2x4x4 (16 positions), conv2 3x2x2 (4 positions),
    so fc reads 12 features, 4 per conv2 filter. The hand-worked costs of test_cost_aware.py
    and test_budget.py are computed on it."""
    from collections import OrderedDict

    torch.manual_seed(seed)
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(1, 2, 3),
            bn=nn.BatchNorm2d(2),
            relu=nn.ReLU(),
            conv2=nn.Conv2d(2, 3, 3),
            flatten=nn.Flatten(),
            fc=nn.Linear(12, 2),
        )
    )


def randomize_batchnorm(model: nn.Module, generator: torch.Generator) -> None:
    """Non-trivial BN statistics and shifts, so a dead unit emits a non-zero constant that its
    consumers must fold (with the initial ones, a dead unit would emit exactly zero) and a
    folded BatchNorm is not the identity."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=generator) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=generator) - 0.5)
