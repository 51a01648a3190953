"""CIFAR-10: 32x32 RGB images, 10 classes, 50,000 train / 10,000 test (Krizhevsky 2009).

Two on-disk formats:
  torchvision  the python batches, `<root>/cifar-10-batches-py/` (downloadable)
  imagefolder  `<root>/train/<class>/*.jpg` and `<root>/test/<class>/*.jpg`, e.g. the JPEG copy
               in `../shared/data/cifar10-jpeg` (then dataset.root points at that folder)

Normalised with the usual CIFAR-10 training-set statistics (mean 0.4914 0.4822 0.4465,
std 0.2470 0.2435 0.2616), also for the JPEG copy, whose own statistics differ in the third
decimal. Training augmentation (augment=true) is the standard one of He et al. 2016, Sec. 4.2:
4-pixel zero padding, a random 32x32 crop and a random horizontal flip.

Subsets: the first N samples of the torchvision batches (already in random class order); for
an ImageFolder tree, which is sorted by class, N evenly spaced samples so every class is kept.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from torchvision import datasets, transforms

from sparsenet.data import DataSplits, register_dataset
from sparsenet.data._common import (
    DOWNLOAD_HINT,
    FORMATS,
    check_format,
    ensure_files,
    load_image,
    load_imagefolder_pair,
    normalize,
    take_subset,
)
from sparsenet.errors import ConfigError

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
BATCH_FILES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta")
IMAGE_SIZE = 32


def _check_imagefolder(train: datasets.ImageFolder) -> None:
    """The tree must have 10 classes of 32x32 images; other names only earn a warning."""
    if len(train.classes) != len(CLASSES):
        raise ConfigError(
            f"cifar10: {train.root} has {len(train.classes)} class folders, expected 10 "
            f"({' '.join(CLASSES)}); for another ImageFolder tree use dataset=imagenet"
        )
    if tuple(train.classes) != CLASSES:
        warnings.warn(
            f"cifar10: class folders of {train.root} are {train.classes}, not the CIFAR-10 "
            f"names; labels follow the folders' sorted order",
            stacklevel=3,
        )
    first = train.samples[0][0]
    size = load_image(first).size
    if size != (IMAGE_SIZE, IMAGE_SIZE):
        raise ConfigError(
            f"cifar10: {first} is {size[0]}x{size[1]}, expected 32x32; for other image sizes "
            f"use dataset=imagenet with dataset.image_size=..."
        )


@register_dataset("cifar10")
def cifar10(
    root: str,
    download: bool = True,
    format: str = "torchvision",
    train_subset: int | None = None,
    test_subset: int | None = None,
    augment: bool = True,
) -> DataSplits:
    """CIFAR-10 from the torchvision batches or an ImageFolder tree (see the module docstring)."""
    check_format(format, FORMATS, "cifar10")
    flip_crop = [transforms.RandomCrop(IMAGE_SIZE, padding=4), transforms.RandomHorizontalFlip()]
    train_tf = transforms.Compose((flip_crop if augment else []) + normalize(MEAN, STD))
    test_tf = transforms.Compose(normalize(MEAN, STD))
    if format == "torchvision":
        ensure_files(
            "cifar10",
            Path(root) / "cifar-10-batches-py",
            BATCH_FILES,
            root_hint="the folder containing cifar-10-batches-py/ (or, with "
            "dataset.format=imagefolder, the folder containing train/ and test/)",
            download=download,
            fetch=lambda: datasets.CIFAR10(root, train=True, download=True),
        )
        train = datasets.CIFAR10(root, train=True, download=False, transform=train_tf)
        test = datasets.CIFAR10(root, train=False, download=False, transform=test_tf)
    else:
        train, test = load_imagefolder_pair(
            "cifar10",
            Path(root),
            ("train", "test"),
            (train_tf, test_tf),
            download_hint="dataset.download cannot fetch an ImageFolder tree: for the original "
            f"batches set dataset.format=torchvision and {DOWNLOAD_HINT.removeprefix('set ')}",
        )
        _check_imagefolder(train)
    spread = format == "imagefolder"
    return DataSplits(
        train=take_subset(train, train_subset, "train_subset", spread=spread),
        test=take_subset(test, test_subset, "test_subset", spread=spread),
        num_classes=len(CLASSES),
        input_shape=(3, IMAGE_SIZE, IMAGE_SIZE),
        in_memory=False,
    )
