"""MNIST and Fashion-MNIST, held in memory as normalised float tensors.

Both are 28x28 grey images, 60,000 train / 10,000 test, 10 classes, stored as four IDX files in
`<root>/MNIST/raw/` (`<root>/FashionMNIST/raw/`), the layout torchvision reads. They are read
once and kept as `TensorDataset`s of x' = (x / 255 - mean) / std, shape N x 1 x 28 x 28 float32
(188 MB for the training set), so batches are slices of one tensor: decoding a PIL image per
sample costs more than the LeNet-sized forward pass it feeds. mean/std are the training-set
pixel statistics (MNIST 0.1307 / 0.3081, Fashion-MNIST 0.2860 / 0.3530: mean and std of the
60,000 training images, pixels scaled to [0, 1]; a `realdata` test checks MNIST's).

`dataset.augment=true` [choice] shifts each training image by up to MAX_SHIFT = 2 pixels in
each direction (background fill), the augmentation behind most MNIST results above 99.5%;
off by default, the usual practice for both datasets.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path

import torch
from torch.utils.data import TensorDataset
from torchvision import datasets

from sparsenet.data import DataCorruptError, DataSplits, register_dataset
from sparsenet.data._augment import RandomShift
from sparsenet.data._common import check_format, check_subset, ensure_files

RAW_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
MAX_SHIFT = 2
STATS = {"MNIST": (0.1307, 0.3081), "FashionMNIST": (0.2860, 0.3530)}


IDX_UBYTE = 0x08  # the IDX type code of unsigned bytes, the only one MNIST uses
REPLACE_HINT = (
    "delete it and run with dataset.download=true to fetch it again, or copy an intact one there"
)


def check_idx_file(dataset: str, path: Path, ndim: int) -> tuple[int, ...]:
    """The dimensions an IDX file of unsigned bytes announces, after checking that its magic
    number and its size agree with them; else DataCorruptError naming the file.

    IDX (LeCun et al.): magic 0x0000 0x08 <ndim>, then ndim big-endian int32 sizes, then the
    bytes. torchvision's reader would fail on a bad file with a bare assertion or a reshape
    error; a download cut short or a copy that ran out of space is the usual cause."""
    size = path.stat().st_size
    header = 4 + 4 * ndim
    with open(path, "rb") as f:
        head = f.read(header)
    if len(head) < 4:
        raise DataCorruptError(f"{dataset}: {path} is truncated ({size} bytes); {REPLACE_HINT}")
    magic = struct.unpack(">I", head[:4])[0]
    expected = (IDX_UBYTE << 8) | ndim
    if magic != expected:
        raise DataCorruptError(
            f"{dataset}: {path} is not an IDX file of {ndim}-d unsigned bytes: magic number "
            f"0x{magic:08x}, expected 0x{expected:08x}; {REPLACE_HINT}"
        )
    if len(head) < header:
        raise DataCorruptError(
            f"{dataset}: {path} is truncated ({size} bytes, shorter than its header); "
            f"{REPLACE_HINT}"
        )
    dims = struct.unpack(f">{ndim}I", head[4:])
    announced = header + math.prod(dims)
    if size != announced:
        what = "truncated" if size < announced else "longer than its header says"
        raise DataCorruptError(
            f"{dataset}: {path} is {what}: its header announces {' x '.join(map(str, dims))} "
            f"bytes ({announced:,} bytes in all) but the file has {size:,}; {REPLACE_HINT}"
        )
    return dims


def _check_raw_files(dataset: str, folder: Path) -> None:
    """Every IDX file sound, and each split with as many labels as images."""
    for images_file, labels_file in zip(RAW_FILES[::2], RAW_FILES[1::2], strict=True):
        images = check_idx_file(dataset, folder / images_file, 3)
        labels = check_idx_file(dataset, folder / labels_file, 1)
        if images[0] != labels[0]:
            raise DataCorruptError(
                f"{dataset}: {folder / labels_file} holds {labels[0]} labels but "
                f"{folder / images_file} holds {images[0]} images; {REPLACE_HINT}"
            )


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
    name = cls.__name__
    ensure_files(
        dataset,
        Path(root),
        Path(root) / name / "raw",
        RAW_FILES,
        root_hint=f"the folder containing {name}/raw/{RAW_FILES[0]} and the other IDX files",
        download=download,
        fetch=lambda: cls(root, train=True, download=True),
    )
    _check_raw_files(dataset, Path(root) / name / "raw")
    mean, std = STATS[name]
    train = cls(root, train=True, download=False)
    test = cls(root, train=False, download=False)
    classes = len(cls.classes)
    for split, labels_file in ((train, RAW_FILES[1]), (test, RAW_FILES[3])):
        low, high = int(split.targets.min()), int(split.targets.max())
        if low < 0 or high >= classes:  # would fail mid-training as an IndexError
            raise DataCorruptError(
                f"{dataset}: {Path(root) / name / 'raw' / labels_file} holds label "
                f"{high if high >= classes else low}, outside 0..{classes - 1}; {REPLACE_HINT}"
            )
    n_train = check_subset(train_subset, len(train), "train_subset")
    n_test = check_subset(test_subset, len(test), "test_subset")
    return DataSplits(
        train=_to_tensors(train, n_train, mean, std),
        test=_to_tensors(test, n_test, mean, std),
        num_classes=len(cls.classes),
        input_shape=(1, *train.data.shape[1:]),
        in_memory=True,
        train_augment=RandomShift(MAX_SHIFT, fill=-mean / std) if augment else None,
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
