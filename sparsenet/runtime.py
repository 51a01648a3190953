"""Process-level concerns: seeding, device choice, atomic file writes."""

from __future__ import annotations

import contextlib
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


def new_file_mode() -> int:
    """The permissions a plain `open(path, "w")` gives a new file: 0o666 less the umask."""
    return 0o666 & ~current_umask()


def current_umask() -> int:
    """The process umask, read without changing it (Linux: /proc/self/status); elsewhere
    os.umask is set and put back at once (another thread could create a file in between)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class _WriteRecorder:
    """The file object handed to a writer: records the OSError of a failed write. torch's
    zip writer turns that error into its own RuntimeError (`PytorchStreamWriter failed
    writing file ...`, `unexpected pos ...`), or swallows it and fails later; the recorded
    one gives the real reason (no space left on device, quota exceeded, I/O error)."""

    def __init__(self, file: BinaryIO) -> None:
        self._file = file
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self._file.write(data)
        except OSError as error:
            self.error = self.error or error
            raise

    def flush(self) -> None:
        try:
            self._file.flush()
        except OSError as error:
            self.error = self.error or error
            raise


# How torch's writer reports a failed write to its file: `[enforce fail at
# inline_container.cc:NNN] . PytorchStreamWriter failed writing file data/0: file write failed`.
_TORCH_WRITER_FAILURE = re.compile(r"PytorchStreamWriter|inline_container\.cc|file write failed")


def _write_failure(error: BaseException, recorder: _WriteRecorder | None) -> str | None:
    """Why writing the file failed, when `error` says the file could not be written (else
    None: a bug or an interrupt, raised as it is)."""
    if isinstance(error, OSError):
        return error.strerror or str(error)
    if not isinstance(error, RuntimeError):
        return None
    if recorder is not None and recorder.error is not None:
        return recorder.error.strerror or str(recorder.error)
    if _TORCH_WRITER_FAILURE.search(str(error)):
        return re.sub(r"^\[enforce fail at [^\]]*\]\s*\.?\s*", "", " ".join(str(error).split()))
    return None


def _atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Write through `write` to a temporary file in the same folder, flush it to disk, then
    rename it over `path`: readers (and a run killed at any moment) see the old file or the
    new one, never half of one. The new file gets the permissions a plain open() would give
    it (0o666 & ~umask; mkstemp's are 0o600). A failure (read-only folder, full disk, torch's
    writer failing on either) raises OutputError naming the file and the reason, removes the
    temporary file and leaves the file's previous version in place."""
    path = Path(path)
    tmp = None
    recorder = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            with contextlib.suppress(OSError):  # a filesystem without modes keeps its own
                os.fchmod(f.fileno(), new_file_mode())
            recorder = _WriteRecorder(f)
            write(recorder)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        if tmp is not None:
            with contextlib.suppress(OSError):
                Path(tmp).unlink(missing_ok=True)
        reason = _write_failure(error, recorder)
        if reason is not None:
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
