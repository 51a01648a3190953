"""CIFAR-10: 32x32 RGB images, 10 classes, 50,000 train / 10,000 test (Krizhevsky 2009).

Two on-disk formats:
  torchvision  the python batches, `<root>/cifar-10-batches-py/` (downloadable)
  imagefolder  `<root>/train/<class>/*.jpg` and `<root>/test/<class>/*.jpg`, e.g. a JPEG
               re-encoding of CIFAR-10 in that layout (dataset.root points at its folder)

Normalised with the usual CIFAR-10 training-set statistics (mean 0.4914 0.4822 0.4465,
std 0.2470 0.2435 0.2616), also for the JPEG copy, whose own statistics differ in the third
decimal. Training augmentation (augment=true) is the standard one of He et al. 2016, Sec. 4.2:
4-pixel zero padding, a random 32x32 crop and a random horizontal flip.

Two ways to serve the images (`dataset.cache`):
  true   (the config's default) both formats are decoded once into a uint8 tensor file (see
         `_tensor_cache.py`: location, fingerprint, rebuild rule) and both splits are held in
         memory as normalised float32 `TensorDataset`s, so the training loop slices batches
         (`loaders.TensorBatchLoader`) and the augmentation is `RandomCropFlip` on the whole
         batch, drawn from the loader's seeded generator. Its result equals the per-sample
         pipeline's for the same draws, to the bit: the padding is black before
         normalisation, i.e. (0 - mean) / std after it.
  false  (the builder's default when called from Python, kept for the existing callers and
         tests) torchvision's datasets with per-sample PIL transforms
         (RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor, Normalize), decoded in
         DataLoader workers every epoch.
Float32 rather than uint8 in memory (614 MB for the training split, 123 MB for the test
split): the evaluation loaders and the pruning stage's calibration batch read the dataset's
tensors directly, with no hook to normalise, so they must be normalised already. Speed does
not decide it: an augmented batch of 128 costs 1.7 ms from either storage, about 1% of a
ResNet-20 step on 2 cores, and training with either runs at the bare loop's speed, while the
per-sample PIL path runs at about 0.8x of it (scripts/results/bench_data.md).

Reading the python batches here (cache=true) uses an unpickler that only accepts numpy arrays
and plain data, and checks their shapes and labels; files that differ from the published
batches (torchvision's md5 list) are read with a warning rather than refused, so a small
batch folder in the tests also loads.

Subsets: the first N samples of the torchvision batches (already in random class order); for
an ImageFolder tree, which is sorted by class, N evenly spaced samples so every class is kept.
Both ways pick the same samples.
"""

from __future__ import annotations

import hashlib
import pickle
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset
from torchvision import datasets, transforms
from tqdm.auto import tqdm

from sparsenet.data import DataCorruptError, DataSplits, register_dataset
from sparsenet.data import _tensor_cache as tensor_cache
from sparsenet.data._augment import RandomCropFlip
from sparsenet.data._common import (
    DOWNLOAD_HINT,
    FORMATS,
    check_format,
    check_subset,
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
SPLIT_FILES = {"train": BATCH_FILES[:5], "test": ("test_batch",)}
IMAGE_SIZE = 32
PADDING = 4
IMAGEFOLDER_HINT = (
    "dataset.download cannot fetch an ImageFolder tree: for the original batches set "
    f"dataset.format=torchvision and {DOWNLOAD_HINT.removeprefix('set ')}"
)
BATCH_REPLACE_HINT = "delete cifar-10-batches-py/ and run with dataset.download=true"


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
            stacklevel=2,
        )
    _check_size(train.samples[0][0], load_image(train.samples[0][0]).size)


def _check_size(path: str, size: tuple[int, int]) -> None:
    if size != (IMAGE_SIZE, IMAGE_SIZE):
        raise ConfigError(
            f"cifar10: {path} is {size[0]}x{size[1]}, expected 32x32; for other image sizes "
            f"use dataset=imagenet with dataset.image_size=..."
        )


def _ensure_batches(root: str, download: bool) -> Path:
    folder = Path(root) / "cifar-10-batches-py"
    ensure_files(
        "cifar10",
        Path(root),
        folder,
        BATCH_FILES,
        root_hint="the folder containing cifar-10-batches-py/ (or, with "
        "dataset.format=imagefolder, the folder containing train/ and test/)",
        download=download,
        fetch=lambda: datasets.CIFAR10(root, train=True, download=True),
    )
    return folder


# ---------------------------------------------------------------------------------------------
# cache=false: per-sample PIL transforms, decoded in DataLoader workers


def _per_sample(
    root: str,
    download: bool,
    format: str,
    train_subset: int | None,
    test_subset: int | None,
    augment: bool,
) -> DataSplits:
    flip_crop = [
        transforms.RandomCrop(IMAGE_SIZE, padding=PADDING),
        transforms.RandomHorizontalFlip(),
    ]
    train_tf = transforms.Compose((flip_crop if augment else []) + normalize(MEAN, STD))
    test_tf = transforms.Compose(normalize(MEAN, STD))
    if format == "torchvision":
        _ensure_batches(root, download)
        train = datasets.CIFAR10(root, train=True, download=False, transform=train_tf)
        test = datasets.CIFAR10(root, train=False, download=False, transform=test_tf)
    else:
        train, test = load_imagefolder_pair(
            "cifar10",
            Path(root),
            ("train", "test"),
            (train_tf, test_tf),
            download_hint=IMAGEFOLDER_HINT,
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


# ---------------------------------------------------------------------------------------------
# cache=true: decoded once into a uint8 tensor file, held in memory


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR python batches (dicts of numpy arrays, lists, str and bytes) and
    nothing else: any other global (the way a crafted pickle runs code) is refused."""

    ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        plain = module.replace("numpy._core", "numpy.core")
        if (plain, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")
        if plain.startswith("numpy.core") and hasattr(np, "_core"):  # numpy 2 renamed it
            module = plain.replace("numpy.core", "numpy._core")
        return super().find_class(module, name)


def _read_batch(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            entry = _BatchUnpickler(f, encoding="latin1").load()
    except Exception as error:  # truncated (EOFError), garbled, refused global, I/O error
        detail = " ".join(f"{type(error).__name__}: {error}".split())[:200]
        raise DataCorruptError(
            f"cifar10: cannot read {path} ({detail}); {BATCH_REPLACE_HINT}"
        ) from None
    if not isinstance(entry, dict):
        raise DataCorruptError(f"cifar10: {path} is not a CIFAR batch; {BATCH_REPLACE_HINT}")
    return entry


def _batch_classes(folder: Path) -> tuple[str, ...]:
    names = _read_batch(folder / "batches.meta").get("label_names")
    if not isinstance(names, list) or len(names) != len(CLASSES):
        raise DataCorruptError(
            f"cifar10: {folder / 'batches.meta'} does not list 10 label_names; {BATCH_REPLACE_HINT}"
        )
    return tuple(str(name) for name in names)


def _check_md5(path: Path) -> None:
    published = dict(datasets.CIFAR10.train_list + datasets.CIFAR10.test_list)
    if hashlib.md5(path.read_bytes()).hexdigest() != published.get(path.name):
        warnings.warn(
            f"cifar10: {path} is not the published CIFAR-10 batch (its md5 differs); "
            "reading it anyway",
            stacklevel=5,
        )


def _decode_batches(folder: Path, names: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 N x 3 x 32 x 32 and int64 labels of the python batches `names`, in order."""
    images, labels = [], []
    for name in tqdm(names, desc="cifar10: reading batches", unit="file", leave=False):
        path = folder / name
        _check_md5(path)
        entry = _read_batch(path)
        data, targets = entry.get("data"), entry.get("labels")
        if (
            not isinstance(data, np.ndarray)
            or data.dtype != np.uint8
            or data.ndim != 2
            or data.shape[1] != 3 * IMAGE_SIZE * IMAGE_SIZE
            or not isinstance(targets, list | np.ndarray)
            or len(targets) != len(data)
        ):
            raise DataCorruptError(
                f"cifar10: {path} does not hold N x 3072 uint8 'data' and N 'labels'; "
                f"{BATCH_REPLACE_HINT}"
            )
        target = torch.as_tensor(np.asarray(targets, dtype=np.int64))
        if len(target) and not 0 <= int(target.min()) <= int(target.max()) < len(CLASSES):
            raise DataCorruptError(f"cifar10: {path} has labels outside 0..9; {BATCH_REPLACE_HINT}")
        # Rows are the 1024 red, then green, then blue values of an image: already C x H x W.
        images.append(torch.from_numpy(data.reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE).copy()))
        labels.append(target)
    return torch.cat(images), torch.cat(labels)


def _decode_images(samples: list[tuple[str, int]], what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 N x 3 x 32 x 32 and int64 labels of ImageFolder samples, decoded the way
    torchvision's loader does (PIL, converted to RGB), each checked to be 32x32."""
    images = np.empty((len(samples), 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    bar = tqdm(samples, desc=f"cifar10: decoding {what}", unit="img", mininterval=1.0)
    for k, (path, _) in enumerate(bar):
        image = load_image(path)
        _check_size(path, image.size)
        images[k] = np.asarray(image).transpose(2, 0, 1)
    labels = torch.tensor([label for _, label in samples], dtype=torch.int64)
    return torch.from_numpy(images), labels


def _sources(
    root: str, download: bool, format: str
) -> tuple[list[tuple[tensor_cache.Source, object]], tuple[str, ...]]:
    """Per split (train, test): the cache's Source and a decode function; and the classes."""
    if format == "torchvision":
        folder = _ensure_batches(root, download)
        classes = _batch_classes(folder)
        out = []
        for split, names in SPLIT_FILES.items():
            entries = [(folder / name, 0) for name in (*names, "batches.meta")]
            # The sample count is not known without unpickling: the fingerprint stands for it.
            source = tensor_cache.Source(
                "cifar10",
                format,
                split,
                folder.resolve(),
                classes,
                None,
                tensor_cache.fingerprint(folder, entries, classes),
                len(entries),
            )
            out.append((source, lambda names=names: _decode_batches(folder, names)))
        return out, classes
    trees = load_imagefolder_pair(
        "cifar10", Path(root), ("train", "test"), (None, None), download_hint=IMAGEFOLDER_HINT
    )
    _check_imagefolder(trees[0])
    out = []
    for split, tree in zip(("train", "test"), trees, strict=True):
        samples = list(tree.samples)
        classes = tuple(tree.classes)
        source = tensor_cache.Source(
            "cifar10",
            format,
            split,
            Path(root).resolve(),
            classes,
            len(samples),
            tensor_cache.fingerprint(Path(root), samples, classes),
            len(samples),
        )
        what = f"{len(samples):,} {split} images of {tree.root}"
        out.append((source, lambda samples=samples, what=what: _decode_images(samples, what)))
    return out, tuple(trees[0].classes)


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 N x 3 x H x W -> float32 (x / 255 - mean) / std, with the float32 operations of
    ToTensor + Normalize (so the result equals theirs to the bit)."""
    mean = torch.tensor(MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(STD, dtype=torch.float32).view(1, 3, 1, 1)
    return images.to(torch.float32).div_(255).sub_(mean).div_(std)


def train_augment() -> RandomCropFlip:
    """He et al.'s pad-4 crop + flip on normalised batches; the padding is a black pixel."""
    black = normalise(torch.zeros(1, 3, 1, 1, dtype=torch.uint8)).flatten().tolist()
    return RandomCropFlip(PADDING, tuple(black))


def _subset_index(size: int, n: int | None, key: str, spread: bool) -> torch.Tensor | slice:
    """The samples `take_subset` keeps, as an index into the split's tensors."""
    n = check_subset(n, size, key)
    if n == size:
        return slice(None)
    return torch.arange(n) * size // n if spread else slice(0, n)


def _cached(
    root: str,
    download: bool,
    format: str,
    train_subset: int | None,
    test_subset: int | None,
    augment: bool,
    cache_dir: str | None,
) -> DataSplits:
    sources, classes = _sources(root, download, format)
    candidates = tensor_cache.folders(root, cache_dir)
    splits = []
    for (source, decode), n, key in zip(
        sources, (train_subset, test_subset), ("train_subset", "test_subset"), strict=True
    ):
        images, labels = tensor_cache.load_or_build(
            source, candidates, decode, explicit=cache_dir is not None
        )
        index = _subset_index(len(images), n, key, spread=format == "imagefolder")
        splits.append(TensorDataset(normalise(images[index]), labels[index].clone()))
    return DataSplits(
        train=splits[0],
        test=splits[1],
        num_classes=len(classes),
        input_shape=(3, IMAGE_SIZE, IMAGE_SIZE),
        in_memory=True,
        train_augment=train_augment() if augment else None,
    )


@register_dataset("cifar10")
def cifar10(
    root: str,
    download: bool = True,
    format: str = "torchvision",
    train_subset: int | None = None,
    test_subset: int | None = None,
    augment: bool = True,
    cache: bool = False,
    cache_dir: str | None = None,
) -> DataSplits:
    """CIFAR-10 from the torchvision batches or an ImageFolder tree (see the module docstring).

    cache: decode once into a tensor cache and hold the splits in memory (conf/dataset/
    cifar10.yaml sets it); cache_dir: where that cache goes (None: next to the data, else the
    user cache folder; see `_tensor_cache.py`).
    """
    check_format(format, FORMATS, "cifar10")
    if cache:
        return _cached(root, download, format, train_subset, test_subset, augment, cache_dir)
    return _per_sample(root, download, format, train_subset, test_subset, augment)
