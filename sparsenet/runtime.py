"""Process-level concerns: seeding, device choice, atomic file writes."""

from __future__ import annotations

import json
import os
import pickle
import random
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from sparsenet.errors import CheckpointError, ConfigError, OutputError

DEVICES = ("auto", "cpu", "cuda")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def select_device(name: str) -> torch.device:
    """auto -> cuda when available, else cpu."""
    if name not in DEVICES and not name.startswith("cuda:"):
        raise ConfigError(
            f"train.device='{name}' is not a device; allowed: {', '.join(DEVICES)}, cuda:N"
        )
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device='{name}' but CUDA is not available here; use auto or cpu")
    return torch.device(name)


def flush_denormals(enabled: bool) -> None:
    """Treat subnormal floats (|x| < 1.2e-38) as zero on CPU (FTZ/DAZ).

    Sparsity regularizers drive weights toward zero, and under Adam many settle in the
    subnormal range, where x86 arithmetic is ~100x slower: paper A's MLP slowed from 3 ms to
    280 ms per 400x784 matmul. Worker threads inherit the flag only when they are created
    after it is set, so this runs before any parallel torch op of the run."""
    torch.set_flush_denormal(bool(enabled))


def set_num_threads(requested: int | None = None) -> int:
    """Torch's intra-op threads for this run. Unset under a parallel launcher (which exports
    SPARSENET_PARALLEL_JOBS=n): cores // n, so parallel runs do not oversubscribe the cores."""
    if requested is None:
        jobs = int(os.environ.get("SPARSENET_PARALLEL_JOBS") or 0)
        if jobs == 0:
            return torch.get_num_threads()
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        requested = max(1, (cores or 1) // jobs) if jobs > 0 else 1  # n_jobs=-1: a job per core
    if int(requested) < 1:
        raise ConfigError(f"train.num_threads={requested} must be >= 1 (or null)")
    torch.set_num_threads(int(requested))
    return int(requested)


def _atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Write through `write` to a temporary file in the same folder, flush it to disk, then
    rename it over `path`: readers (and a run killed at any moment) see the old file or the
    new one, never half of one. A failure (read-only folder, full disk) raises OutputError
    naming the file and leaves its previous version in place."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(error, OSError):
            reason = error.strerror or str(error)
            raise OutputError(
                f"cannot write {path}: {reason}; its previous version, if any, is unchanged"
            ) from error
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    _atomic_write(path, lambda f: f.write(data))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    _atomic_write(path, lambda f: torch.save(obj, f))


def safe_torch_load(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """torch.load with weights_only=True: tensors and plain containers only. A file that
    asks the unpickler for anything else (a class, a function: the way a crafted checkpoint
    runs code) is refused with CheckpointError naming it; nothing in it is executed."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        detail = " ".join(str(error).split())
        found = re.search(r"(Unsupported (global|operand)[^.]*)", detail)
        raise CheckpointError(
            f"refusing to load {path}: it holds objects other than tensors and plain data "
            f"({found.group(1) if found else 'rejected by the weights-only unpickler'}), which "
            "could run code when unpickled; use a checkpoint written by sparsenet"
        ) from None
