"""Helpers shared by the dataset families: option checks, subsets, the missing-data error,
ImageFolder trees checked for empty classes and read with a loader that names a bad image.

Private (leading underscore) so the registry does not import it as a family. Every error
message names the config key (`dataset.<key>=...`) and what would be accepted, because the
person reading it is editing a YAML file or a command line, not this code.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset, Subset
from torchvision import datasets, transforms

from sparsenet.data import DataCorruptError, DataNotFoundError
from sparsenet.errors import ConfigError

FORMATS = ("torchvision", "imagefolder")


def check_format(format: str, allowed: Sequence[str], dataset: str) -> None:
    """Reject a `dataset.format` the family cannot read."""
    if format not in allowed:
        raise ConfigError("format", format, f"is not a format of {dataset}", ", ".join(allowed))


def check_subset(n: int | None, size: int, key: str) -> int:
    """Number of samples to keep: `n`, or all `size` when `n` is None."""
    if n is None:
        return size
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= size:
        raise ConfigError(
            key,
            n,
            "is out of range",
            f"an integer 1..{size} (the split's size) or null for all samples",
        )
    return n


def take_subset(dataset: Dataset, n: int | None, key: str, *, spread: bool = False) -> Dataset:
    """The first `n` samples of `dataset` (all when `n` is None), as a `Subset`.

    spread=True takes `n` evenly spaced samples instead. Use it for ImageFolder trees, whose
    samples are sorted by class: their first `n` would be one or two classes only.
    """
    size = len(dataset)
    n = check_subset(n, size, key)
    if n == size:
        return dataset
    indices = (torch.arange(n) * size // n).tolist() if spread else list(range(n))
    return Subset(dataset, indices)


def normalize(mean: Sequence[float], std: Sequence[float]) -> list:
    """ToTensor then Normalize: the last two transforms of every image pipeline here."""
    return [transforms.ToTensor(), transforms.Normalize(tuple(mean), tuple(std))]


def data_not_found(
    dataset: str,
    folder: Path,
    expected: str,
    *,
    root_hint: str,
    download_hint: str,
    download_error: BaseException | None = None,
    default_subfolder: str = "",
) -> DataNotFoundError:
    """The one message for data that is not where the config says, with the two ways to fix it.

    expected: what should be in `folder` ("files a, b" or "class folders").
    root_hint: which folder `dataset.root` should point at for this family.
    download_hint: way (b); for families that cannot be downloaded, what to do instead.
    default_subfolder: what the family's config appends to $SPARSENET_DATA ("/imagenet").
    """
    # torchvision reports one line per mirror tried; one line keeps the fix visible below it.
    failed = (
        f" Download failed: {' '.join(str(download_error).split())}"
        if download_error is not None
        else ""
    )
    return DataNotFoundError(
        f"{dataset} data not found: looked in {folder.resolve()} for {expected}.{failed}\n"
        f"Fix one of:\n"
        f"  (a) point dataset.root=... at a local copy: {root_hint}. By default dataset.root is "
        f"$SPARSENET_DATA{default_subfolder}, or ./data{default_subfolder} when the environment "
        f"variable SPARSENET_DATA is unset\n"
        f"  (b) {download_hint}"
    )


DOWNLOAD_HINT = "set dataset.download=true on a machine with internet access"


def ensure_files(
    dataset: str,
    root: Path,
    folder: Path,
    files: Sequence[str],
    *,
    root_hint: str,
    download: bool,
    fetch: Callable[[], object],
) -> None:
    """Make sure `folder` (inside the dataset's `root`) holds `files`: download them with
    `fetch` if allowed, else raise.

    A failed download (no internet, mirror down) becomes the same DataNotFoundError, chained
    to the original error, so the user sees how to fix it rather than a urllib traceback. The
    folders it created (between `root`, included, and `folder`) are removed with whatever
    partial files they hold, so a failed attempt leaves the tree as it was; a partial archive
    in a folder that existed before is checked (md5) and fetched again by torchvision.
    """
    missing = [f for f in files if not (folder / f).is_file()]
    if not missing:
        return
    expected = ", ".join(missing)
    if not download:
        raise data_not_found(
            dataset, folder, expected, root_hint=root_hint, download_hint=DOWNLOAD_HINT
        )
    created = _missing_folders(root, folder)
    try:
        fetch()
    except Exception as error:  # URLError, HTTPError, OSError, RuntimeError from the mirrors
        if created:  # everything in a folder the failed download made is the download's
            shutil.rmtree(created[0], ignore_errors=True)
        raise data_not_found(
            dataset,
            folder,
            expected,
            root_hint=root_hint,
            download_hint=DOWNLOAD_HINT + " (the download was tried and failed)",
            download_error=error,
        ) from error


def _missing_folders(root: Path, folder: Path) -> list[Path]:
    """The folders from `root` down to `folder` that do not exist yet, outermost first."""
    chain = [folder, *folder.parents]
    inside = chain[: chain.index(root) + 1] if root in chain else [folder]
    return [path for path in reversed(inside) if not path.exists()]


def load_imagefolder_pair(
    dataset: str,
    root: Path,
    splits: tuple[str, str],
    transforms_: tuple[Callable, Callable],
    *,
    download_hint: str,
    default_subfolder: str = "",
) -> tuple[datasets.ImageFolder, datasets.ImageFolder]:
    """Read `root/<train split>` and `root/<test split>` as ImageFolders with the same classes."""
    folders = [root / split for split in splits]
    for folder in folders:
        if not folder.is_dir() or not any(p.is_dir() for p in folder.iterdir()):
            raise data_not_found(
                dataset,
                folder,
                "one sub-folder of images per class",
                root_hint=f"the folder containing {splits[0]}/<class>/*.jpg and "
                f"{splits[1]}/<class>/*.jpg",
                download_hint=download_hint,
                default_subfolder=default_subfolder,
            )
    train, test = (
        _image_folder(dataset, folder, tf) for folder, tf in zip(folders, transforms_, strict=True)
    )
    if train.classes != test.classes:
        raise ConfigError(
            f"{dataset}: the class folders of {folders[0]} and {folders[1]} differ, so their "
            f"label numbers would disagree; only in {splits[0]}/: "
            f"{sorted(set(train.classes) - set(test.classes))}, only in {splits[1]}/: "
            f"{sorted(set(test.classes) - set(train.classes))}"
        )
    return train, test


def load_image(path: str):
    """torchvision's RGB loader; a file that does not decode raises DataCorruptError naming it
    (it surfaces when the sample is first read, in whichever epoch that is)."""
    try:
        return datasets.folder.default_loader(path)
    except (OSError, ValueError, SyntaxError) as error:  # PIL's UnidentifiedImageError: OSError
        raise DataCorruptError(
            f"cannot read image {path}: {' '.join(str(error).split())}; replace or remove the file"
        ) from None


def _image_folder(dataset: str, folder: Path, transform: Callable) -> datasets.ImageFolder:
    """An ImageFolder read with `load_image`; a class folder without images is refused up
    front, naming it (torchvision names the class only)."""
    try:
        return datasets.ImageFolder(str(folder), transform=transform, loader=load_image)
    except FileNotFoundError:
        extensions = datasets.folder.IMG_EXTENSIONS
        empty = [
            str(d)
            for d in sorted(p for p in folder.iterdir() if p.is_dir())
            if not any(f.is_file() and f.suffix.lower() in extensions for f in d.rglob("*"))
        ]
        if not empty:
            raise
        raise DataCorruptError(
            f"{dataset}: class folder {empty[0]} holds no images ({', '.join(extensions)})"
            f"{f' (nor do {len(empty) - 1} more)' if len(empty) > 1 else ''}; add its images "
            "or remove the folder (from every split, so the class numbers still agree)"
        ) from None
