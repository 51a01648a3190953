"""Datasets: one file per dataset family, each builder registered with `@register_dataset`.

A builder takes `root`, `download`, `format`, `train_subset`, `test_subset`, `augment` (plus
family options such as `image_size`) and returns `DataSplits`. Small datasets (MNIST family,
`fake`) come back as in-memory `TensorDataset`s of normalised float tensors, so the training
loop can index batches without decoding (see `loaders.py`). Shared helpers are in `_common.py`.

A dataset config also carries `num_classes` and `input_shape` for the model config to
interpolate; they are not builder options, and `check_matches_config` compares them with what
the builder found.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Generator, Tensor
from torch.utils.data import Dataset, Subset, TensorDataset

from sparsenet._registry import Registry
from sparsenet.errors import ConfigError, UserInputError

DATASETS = Registry("dataset", __name__)
register_dataset = DATASETS.register
list_datasets = DATASETS.names


@dataclass
class DataSplits:
    train: Dataset
    test: Dataset
    num_classes: int
    input_shape: tuple[int, int, int]
    in_memory: bool  # True when train/test are TensorDatasets already normalised
    # In-memory data only: (images, generator) -> images, applied to training batches.
    train_augment: Callable[[Tensor, Generator], Tensor] | None = None


class DataNotFoundError(UserInputError, FileNotFoundError):
    """Raised when a dataset is not where the config says; the message says how to fix it."""


class DataCorruptError(UserInputError, ValueError):
    """A data file or folder is there but unusable (a truncated or corrupt IDX file, an empty
    class folder, an image that does not decode); the message names it."""


def _identity(dataset: Dataset, digest) -> None:
    """Feed what `dataset` serves into `digest`: the tensors of an in-memory dataset, the
    indices of a subset, the files (relative path, size, mtime) of an image folder."""
    if isinstance(dataset, TensorDataset):
        for tensor in dataset.tensors:
            digest.update(str((tensor.dtype, tuple(tensor.shape))).encode())
            digest.update(tensor.contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(dataset, Subset):
        digest.update(repr(list(dataset.indices)).encode())
        _identity(dataset.dataset, digest)
    elif hasattr(dataset, "samples"):  # ImageFolder
        root = Path(str(getattr(dataset, "root", "")))
        for path, label in dataset.samples:
            stat = Path(path).stat()
            rel = os.path.relpath(path, root) if root else path
            digest.update(f"{rel}|{label}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    elif hasattr(dataset, "data") and hasattr(dataset, "targets"):  # torchvision arrays
        digest.update(np.ascontiguousarray(dataset.data).tobytes())
        digest.update(repr(list(dataset.targets)).encode())
    else:
        digest.update(f"{type(dataset).__name__}:{len(dataset)}".encode())


def data_fingerprint(data: DataSplits) -> str:
    """The identity of the data a run trains and tests on (not where it lies): a run is
    reused only on the same data, so a changed `dataset.root` or edited files mean another
    run (sparsenet/pipeline/run.py)."""
    digest = hashlib.blake2b(digest_size=12)
    for split in (data.train, data.test):
        _identity(split, digest)
        digest.update(b"|split|")
    return digest.hexdigest()


def build_datasets(name: str, **options) -> DataSplits:
    return DATASETS.build(name, **options)


def check_matches_config(
    data: DataSplits, num_classes: int | None = None, input_shape: Sequence[int] | None = None
) -> None:
    """Raise if the config's `num_classes` / `input_shape` (None: not given) disagree with the data.

    The model is built from the config values, so a mismatch would otherwise surface as a
    shape error deep in the first forward pass (or, for classes, as silently wrong logits).
    """
    if num_classes is not None and int(num_classes) != data.num_classes:
        raise ConfigError(
            f"dataset.num_classes={num_classes} but the data has {data.num_classes} classes; "
            f"set dataset.num_classes={data.num_classes}"
        )
    if input_shape is not None and tuple(int(d) for d in input_shape) != tuple(data.input_shape):
        raise ConfigError(
            f"dataset.input_shape={list(input_shape)} but the data gives samples of shape "
            f"{list(data.input_shape)}; set dataset.input_shape={list(data.input_shape)}"
        )


__all__ = [
    "DATASETS",
    "DataCorruptError",
    "DataNotFoundError",
    "DataSplits",
    "build_datasets",
    "check_matches_config",
    "data_fingerprint",
    "list_datasets",
    "register_dataset",
]
