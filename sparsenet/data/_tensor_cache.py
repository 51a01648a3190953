"""Image datasets decoded once into a uint8 tensor file, so later runs skip the decoding.

Why: decoding CIFAR-10's 50,000 JPEG files (or unpickling its python batches) in DataLoader
workers every epoch takes the same two cores the training needs. Decoded once, a split is a
single N x C x H x W uint8 tensor (CIFAR-10 train: 150 MB) that loads in well under a second.

File layout: one file per split, `<folder>/<dataset>-<format>-<split>.pt`, written by
`torch.save` and read back with `torch.load(weights_only=True)` (tensors, str, int and lists
only; nothing in the file can run code when it is read). It holds a dict:
  format "sparsenet-image-cache", version  what this is, the layout version (VERSION)
  dataset, source_format, split             e.g. "cifar10", "imagefolder", "train"
  source                                    the folder it was decoded from (for people)
  classes, count                            class names (label order), number of samples
                                            (checked against the source where it is known
                                            without decoding: an ImageFolder's file list;
                                            for python batches the fingerprint stands for it)
  fingerprint, files                        fingerprint of the source files, their number
  images, labels                            uint8 N x C x H x W, int64 N (the labels)
  checksum                                  CRC-32 of the bytes of images then labels

Fingerprint (the choice): SHA-256 over one line per source file, `relative path NUL size NUL
mtime_ns NUL label`, in reading order, plus the class list. It costs one stat per file (0.2 s
for CIFAR-10's 50,000 JPEGs) instead of reading them all, and changes when a file is edited,
replaced, added, removed, renamed or moved to another class. What it cannot see: a change
that keeps a file's size and modification time (a tool that restores mtime, or an edit within
the file system's timestamp resolution that keeps the size); delete the cache file then.
Copying the data without preserving times (plain `cp -r`) changes every mtime and so costs one
rebuild. The fingerprint is taken before decoding, so a file changed during the decoding makes
the cache stale at the next run rather than silently wrong. Files fingerprinted: an
ImageFolder split's images (paths relative to the root); the python batches of a split plus
batches.meta.

Location (`folders`): with `dataset.cache_dir` set, that folder only. Otherwise
`<root>/.sparsenet-cache/`, next to the data, or, when that cannot be written (a read-only data
copy, as in CI), `$XDG_CACHE_HOME/sparsenet/<root name>-<hash of root path>/` (XDG_CACHE_HOME
defaults to ~/.cache). A folder whose permission bits grant nobody write access (dr-xr-xr-x)
counts as read-only even for root, who could write it anyway: a shared data copy is not
written into by accident.

Reading, in that order of folders: the first file that loads, is a cache of this version, of
this source (dataset, format, split, fingerprint, classes, count) and whose checksum matches is
used. Rebuild rule: a file of another source state (stale) or one that does not load, is
truncated or fails its checksum (corrupt; a warning names it) is rebuilt from the source:
decoded again (with a progress bar) and written to the first writable folder, replacing it
there (a corrupt file in a folder that cannot be written stays, and earns a warning each run
until deleted). Writes are atomic (a temporary file in the same folder, flushed, then `os.replace`):
a run killed mid-write, or two runs writing at once, leave the old file or a complete new one.
When no folder can be written, the build stops before decoding with an error naming the
folders, the corrupt file if there is one, and the fix (dataset.cache_dir, or deleting it).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import warnings
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from sparsenet.data import DataCorruptError
from sparsenet.errors import ConfigError, OutputError
from sparsenet.runtime import atomic_torch_save

FORMAT_TAG = "sparsenet-image-cache"
VERSION = 1
LOCAL_FOLDER = ".sparsenet-cache"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    """What a cache file must have been decoded from to be used."""

    dataset: str
    format: str
    split: str
    root: Path
    classes: tuple[str, ...]
    count: int | None  # None: not known without decoding (the fingerprint stands for it)
    fingerprint: str
    files: int

    @property
    def filename(self) -> str:
        return f"{self.dataset}-{self.format}-{self.split}.pt"


def fingerprint(
    base: Path, entries: Sequence[tuple[str | Path, int]], classes: Sequence[str]
) -> str:
    """SHA-256 of (relative path, size, mtime_ns, label) of each (path, label) entry, in
    order, and the class names (module docstring)."""
    digest = hashlib.sha256()
    digest.update("\0".join(classes).encode() + b"\n")
    for path, label in entries:
        st = os.stat(path)
        relative = os.path.relpath(path, base)
        digest.update(f"{relative}\0{st.st_size}\0{st.st_mtime_ns}\0{label}\n".encode())
    return digest.hexdigest()


def _user_cache_home() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")


def folders(root: str | Path, cache_dir: str | None) -> list[Path]:
    """The cache folders to look in and write to, in order (module docstring)."""
    if cache_dir is not None:
        return [Path(cache_dir).expanduser()]
    root = Path(root).resolve()
    key = hashlib.sha256(str(root).encode()).hexdigest()[:12]
    name = re.sub(r"[^A-Za-z0-9._-]", "_", root.name) or "root"
    return [root / LOCAL_FOLDER, _user_cache_home() / "sparsenet" / f"{name}-{key}"]


def checksum(images: torch.Tensor, labels: torch.Tensor) -> int:
    """CRC-32 of the tensors' bytes (0.1 s for 150 MB): catches a damaged file, not an attack
    (the weights-only loader is what keeps a crafted file from running code)."""
    value = zlib.crc32(images.contiguous().numpy())
    return zlib.crc32(labels.contiguous().numpy(), value)


def _one_line(error: BaseException) -> str:
    return " ".join(f"{type(error).__name__}: {error}".split())[:300]


def read(path: Path, source: Source) -> tuple[tuple[torch.Tensor, torch.Tensor] | None, str]:
    """(images, labels) from the cache file at `path` when it is a sound cache of `source`,
    else (None, why not): the why starts with 'stale' or 'corrupt'."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated zip, bad pickle, refused global, I/O error
        return None, f"corrupt: it does not load ({_one_line(error)})"
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_TAG:
        return None, "corrupt: not a sparsenet image cache"
    if payload.get("version") != VERSION:
        return None, f"stale: layout version {payload.get('version')!r}, expected {VERSION}"
    expected = {
        "dataset": source.dataset,
        "source_format": source.format,
        "split": source.split,
        "classes": list(source.classes),
        "count": source.count,
        "fingerprint": source.fingerprint,
    }
    if source.count is None:
        del expected["count"]
    for key, value in expected.items():
        if payload.get(key) != value:
            found = payload.get(key)
            if key == "fingerprint":
                return None, "stale: the source files changed (size, time, name or number)"
            return None, f"stale: {key} is {found!r}, the source has {value!r}"
    images, labels, count = payload.get("images"), payload.get("labels"), payload.get("count")
    if (
        not isinstance(images, torch.Tensor)
        or not isinstance(labels, torch.Tensor)
        or images.dtype != torch.uint8
        or labels.dtype != torch.int64
        or images.dim() != 4
        or images.shape[0] != count
        or labels.shape != (count,)
    ):
        return None, "corrupt: its images/labels tensors are not N x C x H x W uint8 / N int64"
    if payload.get("checksum") != checksum(images, labels):
        return None, "corrupt: checksum mismatch (the tensor data was damaged)"
    return (images, labels), "ok"


def _read_only_by_mode(path: Path) -> bool:
    """The nearest existing folder at or above `path` grants nobody write access (or, for
    anyone but root, not this user)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    if not os.access(path, os.W_OK | os.X_OK):
        return True
    return path.stat().st_mode & 0o222 == 0


def _writable(folder: Path) -> str | None:
    """None when a file can be created in `folder` (made if missing), else why not."""
    if _read_only_by_mode(folder):
        return "read-only"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as error:
        return error.strerror or str(error)
    return None


def load_or_build(
    source: Source,
    candidates: Sequence[Path],
    decode: Callable[[], tuple[torch.Tensor, torch.Tensor]],
    *,
    explicit: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8, labels int64) of `source`: from the first sound cache file in
    `candidates`, else from `decode()`, then written to the first writable candidate (module
    docstring). explicit: the folder is the user's `dataset.cache_dir` (named in errors)."""
    corrupt: list[tuple[Path, str]] = []
    for folder in candidates:
        path = folder / source.filename
        if not path.is_file():
            continue
        data, why = read(path, source)
        if data is not None:
            for bad, reason in corrupt:  # in a folder that could not take the rebuilt file
                warnings.warn(
                    f"{source.dataset}: ignoring the cache file {bad} ({reason}); using {path}; "
                    f"delete {bad}",
                    stacklevel=3,
                )
            return data
        if why.startswith("corrupt"):
            corrupt.append((path, why))
        else:
            log.info("%s: %s is %s; rebuilding it", source.dataset, path, why)
    refused = []
    for folder in candidates:
        problem = _writable(folder)
        if problem is None:
            target = folder / source.filename
            break
        refused.append(f"{folder} ({problem})")
    else:
        fix = "set dataset.cache_dir to a writable folder"
        if not explicit:
            fix += " (or XDG_CACHE_HOME)"
        fix += ", or dataset.cache=false to decode the images in DataLoader workers instead"
        if corrupt:
            raise DataCorruptError(
                f"{source.dataset}: the cache file {corrupt[0][0]} is {corrupt[0][1]}, and it "
                f"cannot be rebuilt: no cache folder can be written: {'; '.join(refused)}. "
                f"Fix: delete {corrupt[0][0]} if you can, or {fix}"
            )
        raise ConfigError(
            f"{source.dataset}: nowhere to write the decoded {source.split} split: "
            f"{'; '.join(refused)}; {fix}"
        )
    for bad, reason in corrupt:
        warnings.warn(
            f"{source.dataset}: ignoring the cache file {bad} ({reason}); rebuilding it from "
            f"{source.root} into {target}",
            stacklevel=3,
        )
    images, labels = decode()
    count = len(images) if source.count is None else source.count
    if images.dtype != torch.uint8 or len(images) != count or len(labels) != count:
        raise RuntimeError(
            f"decode() gave {tuple(images.shape)} {images.dtype} and {len(labels)} labels, "
            f"expected {count} uint8 images"
        )
    payload = {
        "format": FORMAT_TAG,
        "version": VERSION,
        "dataset": source.dataset,
        "source_format": source.format,
        "split": source.split,
        "source": str(source.root),
        "classes": list(source.classes),
        "count": count,
        "fingerprint": source.fingerprint,
        "files": source.files,
        "images": images,
        "labels": labels,
        "checksum": checksum(images, labels),
    }
    try:
        atomic_torch_save(payload, target)
    except OutputError as error:  # e.g. the disk filled up: the run goes on, uncached
        warnings.warn(f"{source.dataset}: {error}; the next run decodes again", stacklevel=3)
        return images, labels
    # mkstemp makes the file private (0600); a cache next to shared data is for everyone who
    # may read the data, so give it the permissions a plain new file would get.
    umask = os.umask(0)
    os.umask(umask)
    with contextlib.suppress(OSError):
        target.chmod(0o666 & ~umask)
    log.info("%s: wrote %s", source.dataset, target)
    return images, labels
