"""Datasets: one file per dataset family, each builder registered with `@register_dataset`.

A builder takes `root`, `download`, `format`, `train_subset`, `augment` and returns
`DataSplits`. Small datasets (MNIST family) come back as in-memory `TensorDataset`s of
normalised float tensors, so the training loop can index batches without decoding.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch.utils.data import Dataset

from sparsenet._registry import Registry

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


class DataNotFoundError(FileNotFoundError):
    """Raised when a dataset is not where the config says; the message says how to fix it."""


def build_datasets(name: str, **options) -> DataSplits:
    return DATASETS.build(name, **options)


__all__ = [
    "DATASETS",
    "DataNotFoundError",
    "DataSplits",
    "build_datasets",
    "list_datasets",
    "register_dataset",
]
