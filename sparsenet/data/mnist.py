"""MNIST and Fashion-MNIST, held in memory as normalised float tensors.

Both are 28x28 grey images, 60,000 train / 10,000 test, 10 classes, stored as four IDX files in
`<root>/MNIST/raw/` (`<root>/FashionMNIST/raw/`), the layout torchvision reads. They are read
once and kept as `TensorDataset`s of x' = (x / 255 - mean) / std, shape N x 1 x 28 x 28 float32
(188 MB for the training set), so batches are slices of one tensor: decoding a PIL image per
sample costs more than the LeNet-sized forward pass it feeds. mean/std are the training-set
pixel statistics (MNIST 0.1307 / 0.3081, Fashion-MNIST 0.2860 / 0.3530, as measured in
`../shared/data/README.md`). No augmentation: the usual practice for both.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import TensorDataset
from torchvision import datasets

from sparsenet.data import DataSplits, register_dataset
from sparsenet.data._common import check_format, check_subset, ensure_files
from sparsenet.errors import ConfigError

RAW_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
STATS = {"MNIST": (0.1307, 0.3081), "FashionMNIST": (0.2860, 0.3530)}


def _to_tensors(split: datasets.MNIST, n: int, mean: float, std: float) -> TensorDataset:
    # The same float32 steps as ToTensor + Normalize, done once for the whole split, in place.
    x = split.data[:n].unsqueeze(1).to(torch.float32)
    x.div_(255).sub_(mean).div_(std)
    return TensorDataset(x, split.targets[:n].clone())


def _build(
    cls: type[datasets.MNIST],
    dataset: str,
    root: str,
    download: bool,
    format: str,
    train_subset: int | None,
    test_subset: int | None,
    augment: bool,
) -> DataSplits:
    check_format(format, ("torchvision",), dataset)
    if augment:
        raise ConfigError(
            f"dataset.augment=true is not supported for {dataset}: it is held in memory as "
            f"normalised tensors; set dataset.augment=false"
        )
    name = cls.__name__
    ensure_files(
        dataset,
        Path(root) / name / "raw",
        RAW_FILES,
        root_hint=f"the folder containing {name}/raw/{RAW_FILES[0]} and the other IDX files",
        download=download,
        fetch=lambda: cls(root, train=True, download=True),
    )
    mean, std = STATS[name]
    train = cls(root, train=True, download=False)
    test = cls(root, train=False, download=False)
    n_train = check_subset(train_subset, len(train), "train_subset")
    n_test = check_subset(test_subset, len(test), "test_subset")
    return DataSplits(
        train=_to_tensors(train, n_train, mean, std),
        test=_to_tensors(test, n_test, mean, std),
        num_classes=len(cls.classes),
        input_shape=(1, *train.data.shape[1:]),
        in_memory=True,
    )


@register_dataset("mnist")
def mnist(
    root: str,
    download: bool = True,
    format: str = "torchvision",
    train_subset: int | None = None,
    test_subset: int | None = None,
    augment: bool = False,
) -> DataSplits:
    """MNIST handwritten digits (LeCun et al. 1998); subsets keep the first N samples."""
    return _build(
        datasets.MNIST, "mnist", root, download, format, train_subset, test_subset, augment
    )


@register_dataset("fashion_mnist")
def fashion_mnist(
    root: str,
    download: bool = True,
    format: str = "torchvision",
    train_subset: int | None = None,
    test_subset: int | None = None,
    augment: bool = False,
) -> DataSplits:
    """Fashion-MNIST article images (Xiao et al. 2017); subsets keep the first N samples."""
    return _build(
        datasets.FashionMNIST,
        "fashion_mnist",
        root,
        download,
        format,
        train_subset,
        test_subset,
        augment,
    )
