"""Dataset builders and loaders on tiny files written here (no network, no real data).

Expected values are worked out by hand or by torchvision's own per-sample transforms; one
`realdata` test checks a real MNIST copy against MNIST's known sizes and labels per class.
"""

from __future__ import annotations

import struct
import urllib.error
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Subset, TensorDataset
from torchvision import datasets, transforms

from sparsenet.data import (
    DataCorruptError,
    DataNotFoundError,
    DataSplits,
    build_datasets,
    check_matches_config,
    list_datasets,
)
from sparsenet.data._augment import RandomShift
from sparsenet.data.cifar10 import CLASSES
from sparsenet.data.loaders import TensorBatchLoader, make_loader


def test_registry_lists_every_family():
    assert set(list_datasets()) >= {"mnist", "fashion_mnist", "cifar10", "imagenet", "fake"}
    assert not any(name.startswith("_") for name in list_datasets())


def test_mnist_loads_in_memory_and_normalises_exactly(mnist_root: Path):
    data = build_datasets("mnist", root=str(mnist_root), download=False)
    assert isinstance(data, DataSplits) and data.in_memory
    assert (data.num_classes, data.input_shape) == (10, (1, 28, 28))
    x, y = data.train.tensors
    assert x.shape == (12, 1, 28, 28) and x.dtype == torch.float32
    assert y.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    assert data.test.tensors[1].tolist() == [9, 8, 7, 6, 5]
    # By hand: (255/255 - 0.1307)/0.3081 = 0.8693/0.3081 = 2.821486...,
    # (0 - 0.1307)/0.3081 = -0.424213..., (128/255 - 0.1307)/0.3081 = 0.371261/0.3081 = 1.205001...
    assert x[0, 0, 0, :3].tolist() == pytest.approx([2.821487, -0.424213, 1.205001], abs=1e-5)
    # And bit for bit what torchvision's per-sample ToTensor + Normalize gives.
    reference = datasets.MNIST(
        str(mnist_root),
        train=True,
        transform=transforms.Compose(
            [transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))]
        ),
    )
    for i in (0, 11):
        assert torch.equal(x[i], reference[i][0])


def test_mnist_subsets_keep_the_first_samples(mnist_root: Path):
    full = build_datasets("mnist", root=str(mnist_root), download=False)
    part = build_datasets(
        "mnist", root=str(mnist_root), download=False, train_subset=5, test_subset=2
    )
    assert len(part.train) == 5 and len(part.test) == 2
    for a, b in zip(part.train.tensors, full.train.tensors, strict=True):
        assert torch.equal(a, b[:5])
    assert part.test.tensors[1].tolist() == [9, 8]


def test_fashion_mnist_uses_its_own_folder_and_statistics(mnist_root: Path):
    (mnist_root / "MNIST").rename(mnist_root / "FashionMNIST")
    data = build_datasets("fashion_mnist", root=str(mnist_root), download=False)
    # (255/255 - 0.2860)/0.3530 = 0.714/0.353 = 2.022663...
    assert data.train.tensors[0][0, 0, 0, 0].item() == pytest.approx(2.022663, abs=1e-5)


def test_missing_mnist_says_where_it_looked_and_how_to_fix_it(tmp_path: Path):
    root = tmp_path / "nowhere"
    with pytest.raises(DataNotFoundError) as info:
        build_datasets("mnist", root=str(root), download=False)
    message = str(info.value)
    assert str((root / "MNIST" / "raw").resolve()) in message
    for hint in ("dataset.root", "SPARSENET_DATA", "dataset.download=true", "MNIST/raw"):
        assert hint in message
    assert isinstance(info.value, FileNotFoundError)


def test_failed_download_becomes_the_same_error(tmp_path: Path, monkeypatch):
    def offline(self):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(datasets.MNIST, "download", offline)
    with pytest.raises(DataNotFoundError, match="Download failed") as info:
        build_datasets("mnist", root=str(tmp_path), download=True)
    assert isinstance(info.value.__cause__, urllib.error.URLError)
    assert "SPARSENET_DATA" in str(info.value)


@pytest.mark.parametrize("root_exists", [False, True])
def test_failed_download_leaves_no_folders_behind(tmp_path: Path, monkeypatch, root_exists):
    """What a failed download created (the dataset's folders, a partial file in them) goes;
    a root that existed before stays, with what it held."""
    root = tmp_path / "data"
    if root_exists:
        root.mkdir()
        (root / "keep.txt").write_text("mine")

    def partial_then_offline(self):
        raw = root / "MNIST" / "raw"
        raw.mkdir(parents=True, exist_ok=True)
        (raw / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b partial")
        raise urllib.error.URLError("connection reset")

    monkeypatch.setattr(datasets.MNIST, "download", partial_then_offline)
    with pytest.raises(DataNotFoundError, match="Download failed"):
        build_datasets("mnist", root=str(root), download=True)
    if root_exists:
        assert sorted(p.name for p in root.iterdir()) == ["keep.txt"]
    else:
        assert not root.exists()


def test_bad_options_name_the_key_and_what_is_allowed(mnist_root: Path):
    """A builder names its own option; the config layer puts it under `dataset.`."""
    root = str(mnist_root)
    with pytest.raises(ValueError, match=r"^format='imagefolder' .*allowed: torchvision$") as info:
        build_datasets("mnist", root=root, format="imagefolder")
    assert str(info.value.at("dataset")).startswith("dataset.format='imagefolder' is not")
    with pytest.raises(ValueError, match="allowed: torchvision, imagefolder"):
        build_datasets("cifar10", root=root, format="jpeg")
    with pytest.raises(ValueError, match=r"^train_subset=0 .*1\.\.12"):
        build_datasets("mnist", root=root, download=False, train_subset=0)
    with pytest.raises(ValueError, match=r"^train_subset=13 .*1\.\.12"):
        build_datasets("mnist", root=root, download=False, train_subset=13)
    with pytest.raises(ValueError, match=r"^test_subset=6 .*1\.\.5"):
        build_datasets("mnist", root=root, download=False, test_subset=6)


def test_random_shift_moves_each_image_by_its_own_offset():
    # One bright pixel per image at (row 10, col 12); a shift (dy, dx) moves it to
    # (10 + dy, 12 + dx); everything else is the fill value.
    images = torch.full((64, 1, 28, 28), -0.5)
    images[:, 0, 10, 12] = 3.0
    shifted = RandomShift(2, fill=-0.5)(images, torch.Generator().manual_seed(0))
    assert shifted.shape == images.shape
    moves = set()
    for image in shifted:
        bright = (image[0] == 3.0).nonzero().tolist()
        assert len(bright) == 1 and (image[0] == -0.5).sum() == 28 * 28 - 1
        dy, dx = bright[0][0] - 10, bright[0][1] - 12
        assert -2 <= dy <= 2 and -2 <= dx <= 2
        moves.add((dy, dx))
    assert len(moves) > 10  # offsets drawn per image, not one per batch
    # A pixel at the border shifted outwards leaves the image: the fill takes its place.
    edge = torch.zeros(200, 1, 5, 5)
    edge[:, 0, 0, 0] = 1.0
    out = RandomShift(1)(edge, torch.Generator().manual_seed(1))
    kept = out.flatten(1).sum(1)
    assert set(kept.tolist()) == {0.0, 1.0} and 0 < kept.sum() < 200
    assert torch.equal(RandomShift(0)(images, torch.Generator()), images)


def test_mnist_augment_shifts_training_batches_only_and_reproducibly(mnist_root: Path):
    data = build_datasets("mnist", root=str(mnist_root), download=False, augment=True)
    plain = build_datasets("mnist", root=str(mnist_root), download=False, augment=False)
    assert plain.train_augment is None and isinstance(data.train_augment, RandomShift)
    # fill = the background (raw 0) after normalisation
    assert data.train_augment.fill == pytest.approx(-0.1307 / 0.3081)

    def epoch(seed: int) -> list[torch.Tensor]:
        loader = make_loader(data.train, 4, shuffle=True, seed=seed, augment=data.train_augment)
        return [x for x, _ in loader]

    first, again = epoch(0), epoch(0)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    unshifted = make_loader(plain.train, 4, shuffle=True, seed=0)
    assert any(not torch.equal(a, x) for a, (x, _) in zip(first, unshifted, strict=True))


@pytest.mark.parametrize(
    ("file", "damage", "expected"),
    [
        # 12 images of 28x28 announced: 16 + 9408 bytes; cut to 1000
        (
            "train-images-idx3-ubyte",
            lambda b: b[:1000],
            "is truncated: its header announces 12 x 28 x 28 bytes (9,424 bytes in all) but "
            "the file has 1,000",
        ),
        # a label file's magic is 0x00000801; gzip's first bytes are 1f 8b 08 00
        (
            "t10k-labels-idx1-ubyte",
            lambda b: b"\x1f\x8b\x08\x00" + b[4:],
            "is not an IDX file of 1-d unsigned bytes: magic number 0x1f8b0800, expected "
            "0x00000801",
        ),
        ("t10k-images-idx3-ubyte", lambda b: b[:2], "is truncated (2 bytes)"),
        ("train-labels-idx1-ubyte", lambda b: b + b"\x00", "is longer than its header says"),
    ],
)
def test_a_corrupt_idx_file_is_named(mnist_root: Path, file, damage, expected):
    path = mnist_root / "MNIST" / "raw" / file
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(DataCorruptError) as info:
        build_datasets("mnist", root=str(mnist_root), download=False)
    message = str(info.value)
    assert message.startswith(f"mnist: {path} ") and expected in message
    assert "dataset.download=true" in message and "\n" not in message


def test_images_and_labels_of_a_split_must_agree(mnist_root: Path):
    raw = mnist_root / "MNIST" / "raw"
    (raw / "t10k-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, 4) + bytes([1, 2, 3, 4]))
    with pytest.raises(
        DataCorruptError,
        match=r"t10k-labels-idx1-ubyte holds 4 labels but .*"
        r"t10k-images-idx3-ubyte holds 5 images",
    ):
        build_datasets("mnist", root=str(mnist_root), download=False)


def test_a_label_outside_the_classes_is_refused_naming_the_file(mnist_root: Path):
    """Label 12 in a 10-class file: refused when the data is read, not an IndexError in the
    middle of training."""
    labels = mnist_root / "MNIST" / "raw" / "train-labels-idx1-ubyte"
    labels.write_bytes(struct.pack(">II", 2049, 12) + bytes([1] * 11 + [12]))
    with pytest.raises(DataCorruptError) as info:
        build_datasets("mnist", root=str(mnist_root), download=False)
    assert str(info.value).startswith(f"mnist: {labels} holds label 12, outside 0..9; ")


# ---------------------------------------------------------------------------------------------
# ImageFolder trees: cifar10 (format=imagefolder) and imagenet


def _colour(label: int, k: int) -> tuple[int, int, int]:
    return (20 * label + k, 255 - 20 * label, 100 + k)


def _write_tree(root: Path, splits: tuple[str, ...], classes=CLASSES, size: int = 32) -> Path:
    """Per split, 2 solid-colour PNGs per class; colour encodes (label, index)."""
    for split in splits:
        for label, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for k in range(2):
                Image.new("RGB", (size, size), _colour(label, k)).save(folder / f"{k}.png")
    return root


def test_cifar10_imagefolder_loads_normalises_and_spreads_subsets(tmp_path: Path):
    root = _write_tree(tmp_path, ("train", "test"))
    data = build_datasets("cifar10", root=str(root), format="imagefolder", augment=False)
    assert (len(data.train), len(data.test), data.num_classes) == (20, 20, 10)
    assert data.input_shape == (3, 32, 32) and not data.in_memory
    x, y = data.train[3]  # class 1 (automobile), image 1
    assert y == 1 and x.shape == (3, 32, 32)
    r, g, b = _colour(1, 1)  # (21, 235, 101)
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    expected = [(v / 255 - m) / s for v, m, s in zip((r, g, b), mean, std, strict=True)]
    assert x[:, 5, 7].tolist() == pytest.approx(expected, abs=1e-5)
    # Class-sorted tree: a subset of 10 must still hold every class.
    part = build_datasets(
        "cifar10", root=str(root), format="imagefolder", train_subset=10, test_subset=3
    )
    assert sorted(part.train[i][1] for i in range(10)) == list(range(10))
    assert len(part.test) == 3
    augmented = build_datasets("cifar10", root=str(root), format="imagefolder", augment=True)
    assert augmented.train[0][0].shape == (3, 32, 32)


def test_cifar10_imagefolder_checks_the_tree(tmp_path: Path):
    with pytest.raises(ValueError, match="3 class folders, expected 10"):
        build_datasets(
            "cifar10",
            root=str(_write_tree(tmp_path / "a", ("train", "test"), CLASSES[:3])),
            format="imagefolder",
        )
    with pytest.raises(ValueError, match="expected 32x32"):
        build_datasets(
            "cifar10",
            root=str(_write_tree(tmp_path / "b", ("train", "test"), size=16)),
            format="imagefolder",
        )
    root = _write_tree(tmp_path / "c", ("train",))
    _write_tree(root, ("test",), (*CLASSES[:9], "lorry"))
    with pytest.raises(ValueError, match=r"differ.*'truck'.*'lorry'"):
        build_datasets("cifar10", root=str(root), format="imagefolder")


def test_an_empty_class_folder_is_named(tmp_path: Path):
    root = _write_tree(tmp_path, ("train", "test"))
    for image in (root / "test" / "cat").iterdir():
        image.unlink()
    (root / "test" / "cat" / "notes.txt").write_text("not an image")
    with pytest.raises(DataCorruptError) as info:
        build_datasets("cifar10", root=str(root), format="imagefolder")
    message = str(info.value)
    assert message.startswith(f"cifar10: class folder {root / 'test' / 'cat'} holds no images")
    assert ".png" in message and "\n" not in message


def test_an_image_that_does_not_decode_is_named(tmp_path: Path):
    root = _write_tree(tmp_path, ("train", "test"))
    bad = root / "train" / "dog" / "1.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)  # a PNG signature, then noise
    data = build_datasets("cifar10", root=str(root), format="imagefolder", augment=False)
    index = [path for path, _ in data.train.samples].index(str(bad))
    assert data.train[index - 1][1] == 5  # its neighbour still loads
    with pytest.raises(DataCorruptError, match=rf"^cannot read image {bad}: .*replace or remove"):
        data.train[index]
    # Read by a DataLoader worker, it arrives as the same one-line message, not the worker's
    # traceback.
    loader = make_loader(data.train, 4, shuffle=False, seed=0, num_workers=1)
    with pytest.raises(DataCorruptError) as info:
        list(loader)
    assert str(info.value).startswith(f"cannot read image {bad}: ")
    assert "Traceback" not in str(info.value) and "\n" not in str(info.value)


def test_cifar10_missing_data(tmp_path: Path):
    _write_tree(tmp_path, ("train",))
    with pytest.raises(DataNotFoundError) as info:
        build_datasets("cifar10", root=str(tmp_path), format="imagefolder")
    assert str((tmp_path / "test").resolve()) in str(info.value)
    assert "SPARSENET_DATA" in str(info.value)
    with pytest.raises(DataNotFoundError, match="cifar-10-batches-py"):
        build_datasets("cifar10", root=str(tmp_path / "none"), download=False)


def test_imagenet_imagefolder_with_a_small_image_size(tmp_path: Path):
    root = _write_tree(tmp_path, ("train", "val"), CLASSES[:4], size=40)
    data = build_datasets("imagenet", root=str(root), image_size=32)
    assert (data.num_classes, data.input_shape) == (4, (3, 32, 32))
    assert data.train[0][0].shape == data.test[7][0].shape == (3, 32, 32)
    assert data.test[7][1] == 3
    plain = build_datasets("imagenet", root=str(root), image_size=32, augment=False)
    assert torch.equal(plain.train[2][0], plain.test[2][0])  # same images, same test transform
    part = build_datasets("imagenet", root=str(root), image_size=32, train_subset=4)
    assert sorted(part.train[i][1] for i in range(4)) == [0, 1, 2, 3]


def test_imagenet_missing_says_it_cannot_be_downloaded(tmp_path: Path):
    with pytest.raises(DataNotFoundError, match="cannot be downloaded") as info:
        build_datasets("imagenet", root=str(tmp_path))
    assert str((tmp_path / "train").resolve()) in str(info.value)
    with pytest.raises(ValueError, match="allowed: imagefolder"):
        build_datasets("imagenet", root=str(tmp_path), format="torchvision")


# ---------------------------------------------------------------------------------------------
# fake


def test_fake_shapes_determinism_and_learnable_labels():
    data = build_datasets("fake", image_shape=[3, 8, 8], classes=4, train_size=200, test_size=100)
    assert data.in_memory and (data.num_classes, data.input_shape) == (4, (3, 8, 8))
    x, y = data.train.tensors
    assert x.shape == (200, 3, 8, 8) and y.shape == (200,) and set(y.tolist()) == {0, 1, 2, 3}
    again = build_datasets("fake", image_shape=[3, 8, 8], classes=4, train_size=200, test_size=100)
    assert torch.equal(x, again.train.tensors[0]) and torch.equal(y, again.train.tensors[1])
    other = build_datasets("fake", image_shape=[3, 8, 8], classes=4, seed=1)
    assert not torch.equal(x[:10], other.train.tensors[0][:10])
    # Labels depend on the images: nearest class mean of the training set classifies the test set.
    means = torch.stack([x[y == c].mean(0) for c in range(4)]).flatten(1)
    tx, ty = data.test.tensors
    predicted = torch.cdist(tx.flatten(1), means).argmin(1)
    assert (predicted == ty).float().mean() > 0.9
    small = build_datasets("fake", train_subset=10, test_subset=3)
    assert (len(small.train), len(small.test), small.input_shape) == (10, 3, (1, 28, 28))


def test_check_matches_config():
    data = build_datasets("fake", image_shape=[1, 8, 8], classes=3, train_size=4, test_size=4)
    check_matches_config(data, num_classes=3, input_shape=[1, 8, 8])
    check_matches_config(data)
    with pytest.raises(ValueError, match=r"dataset.num_classes=10 .* 3 classes"):
        check_matches_config(data, num_classes=10)
    with pytest.raises(ValueError, match=r"dataset.input_shape=\[3, 32, 32\] .*\[1, 8, 8\]"):
        check_matches_config(data, input_shape=[3, 32, 32])


# ---------------------------------------------------------------------------------------------
# loaders


def _tensor_data(n: int = 10) -> TensorDataset:
    return TensorDataset(torch.arange(n).float().unsqueeze(1), torch.arange(n))


def _epoch(loader) -> list[int]:
    return torch.cat([y for _, y in loader]).tolist()


def test_tensor_batch_loader_covers_every_sample_once_per_epoch():
    loader = make_loader(_tensor_data(), 4, shuffle=True, seed=0)
    assert isinstance(loader, TensorBatchLoader) and len(loader) == 3
    sizes = [len(y) for _, y in loader]
    assert sizes == [4, 4, 2]
    for _ in range(3):
        order = _epoch(loader)
        assert sorted(order) == list(range(10))
    x, y = next(iter(loader))
    assert torch.equal(x[:, 0].long(), y)  # rows stay paired


def test_tensor_batch_loader_is_reproducible_and_reshuffles():
    a = make_loader(_tensor_data(50), 8, shuffle=True, seed=3)
    b = make_loader(_tensor_data(50), 8, shuffle=True, seed=3)
    epochs_a = [_epoch(a) for _ in range(3)]
    assert epochs_a == [_epoch(b) for _ in range(3)]
    assert epochs_a[0] != epochs_a[1] != epochs_a[2]
    assert epochs_a[0] != _epoch(make_loader(_tensor_data(50), 8, shuffle=True, seed=4))
    a.set_epoch(1)
    assert _epoch(a) == epochs_a[1]


def test_tensor_batch_loader_in_order_and_drop_last():
    ordered = make_loader(_tensor_data(), 4, shuffle=False, seed=0)
    assert _epoch(ordered) == list(range(10)) == _epoch(ordered)
    dropped = make_loader(_tensor_data(), 4, shuffle=True, seed=0, drop_last=True)
    assert len(dropped) == 2 and [len(y) for _, y in dropped] == [4, 4]
    assert len(make_loader(_tensor_data(), 4, shuffle=False, seed=0, drop_last=True)) == 2


def test_other_datasets_get_a_seeded_dataloader():
    subset = Subset(_tensor_data(20), range(12))
    loader = make_loader(subset, 5, shuffle=True, seed=1)
    assert isinstance(loader, DataLoader) and len(loader) == 3
    first = _epoch(loader)
    assert sorted(first) == list(range(12))
    assert first == _epoch(make_loader(subset, 5, shuffle=True, seed=1))


# ---------------------------------------------------------------------------------------------
# the real MNIST copy


# Labels per class of the original MNIST files (60,000 train, 10,000 test); a faithful copy matches.
REAL_MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
REAL_MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.mark.realdata
def test_real_mnist_matches_its_readme(real_data_root):
    root = real_data_root
    data = build_datasets("mnist", root=str(root), download=False)
    x, y = data.train.tensors
    assert (len(data.train), len(data.test)) == (60000, 10000)
    assert torch.bincount(y).tolist() == REAL_MNIST_TRAIN_COUNTS
    assert torch.bincount(data.test.tensors[1]).tolist() == REAL_MNIST_TEST_COUNTS
    # mean/std are the training set's own, so the normalised training set is ~ N(0, 1) overall.
    assert x.mean().item() == pytest.approx(0.0, abs=1e-3)
    assert x.std().item() == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("in_memory", [True, False])
def test_epoch_order_depends_only_on_seed_and_epoch(in_memory):
    data = TensorDataset(torch.arange(20).float().unsqueeze(1), torch.arange(20))
    if not in_memory:
        data = Subset(data, range(20))  # not a TensorDataset: goes through the DataLoader path

    def labels(loader):
        return torch.cat([batch[1] for batch in loader]).tolist()

    straight = make_loader(data, 6, shuffle=True, seed=3)
    epochs = [labels(straight) for _ in range(3)]
    assert epochs[0] != epochs[2] and sorted(epochs[2]) == list(range(20))
    resumed = make_loader(data, 6, shuffle=True, seed=3)
    resumed.set_epoch(2)
    assert labels(resumed) == epochs[2]
