"""CIFAR-10 through the uint8 tensor cache (dataset.cache=true), on small trees written here.

Expected values come from hand-worked examples, from the images as written (numpy arrays) or
from torchvision's per-sample PIL operations (pad, crop, hflip, ToTensor, Normalize), never
from the cache's own output. No test reads ../shared/data except the `realdata` one.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import TensorDataset
from torchvision import datasets, transforms
from torchvision.datasets import cifar as cifar_module
from torchvision.transforms import functional as TF

from sparsenet.data import DataCorruptError, build_datasets
from sparsenet.data import cifar10 as cifar10_module
from sparsenet.data._augment import RandomCropFlip
from sparsenet.data._tensor_cache import LOCAL_FOLDER, folders
from sparsenet.data.cifar10 import CLASSES, MEAN, STD
from sparsenet.data.loaders import TensorBatchLoader, make_loader
from sparsenet.errors import ConfigError

TRAIN_PER_CLASS, TEST_PER_CLASS = 24, 6
NORMALIZE = transforms.Compose([transforms.ToTensor(), transforms.Normalize(MEAN, STD)])


def _pixels(seed: int) -> np.ndarray:
    """A 32x32 RGB image with structure (a gradient) and noise, so crops and flips show."""
    rng = np.random.default_rng(seed)
    ramp = np.add.outer(np.arange(32), 2 * np.arange(32))[:, :, None] * np.array([3, 2, 1])
    return ((ramp + rng.integers(0, 60, (32, 32, 3))) % 256).astype(np.uint8)


def _write_tree(root: Path, suffix: str = ".jpg") -> Path:
    for split, per_class in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
        for label, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for k in range(per_class):
                seed = 1000 * label + k + (0 if split == "train" else 500)
                Image.fromarray(_pixels(seed)).save(folder / f"{k:04d}{suffix}")
    return root


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return _write_tree(tmp_path / "cifar10-jpeg")


def _build(root: Path, **options):
    options = {"format": "imagefolder", "cache": True, **options}
    return build_datasets("cifar10", root=str(root), **options)


class _Counter:
    """Wraps a function and counts its calls."""

    def __init__(self, function):
        self.function, self.calls = function, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.function(*args, **kwargs)


@pytest.fixture
def decodes(monkeypatch) -> _Counter:
    """Counts the splits decoded from the image files (0 when both come from the cache)."""
    counter = _Counter(cifar10_module._decode_images)
    monkeypatch.setattr(cifar10_module, "_decode_images", counter)
    return counter


# ---------------------------------------------------------------------------------------------
# The batch crop + flip


def test_crop_flip_on_a_hand_computed_example():
    x = torch.arange(1.0, 17.0).view(1, 1, 4, 4)  # rows 1 2 3 4 / 5 6 7 8 / ... / 13 .. 16
    images = torch.cat([x, x + 100])
    augment = RandomCropFlip(padding=1, fill=-1.0)
    # Image 0: offset (0, 2), no flip: out[r, c] = x[r - 1, c + 1] (-1 outside).
    # Image 1: offset (2, 0), flipped: out[r, c] = x[r + 1, 2 - c] + 100.
    out = augment.apply(images, torch.tensor([0, 2]), torch.tensor([2, 0]), torch.tensor([0, 1]))
    assert out[0, 0].tolist() == [
        [-1, -1, -1, -1],
        [2, 3, 4, -1],
        [6, 7, 8, -1],
        [10, 11, 12, -1],
    ]
    assert out[1, 0].tolist() == [
        [107, 106, 105, -1],
        [111, 110, 109, -1],
        [115, 114, 113, -1],
        [-1, -1, -1, -1],
    ]


def test_crop_flip_fills_each_channel_with_its_own_value():
    images = torch.zeros(1, 2, 3, 3)
    augment = RandomCropFlip(padding=2, fill=(-1.5, 7.0))
    # Offset (0, 0): the output's top-left 2x2 block is padding, the rest image (0).
    out = augment.apply(images, torch.tensor([0]), torch.tensor([0]), torch.tensor([0]))
    assert out[0, 0].tolist() == [[-1.5, -1.5, -1.5], [-1.5, -1.5, -1.5], [-1.5, -1.5, 0.0]]
    assert out[0, 1].tolist() == [[7.0, 7.0, 7.0], [7.0, 7.0, 7.0], [7.0, 7.0, 0.0]]


def test_crop_flip_draws_every_offset_and_both_flips_reproducibly():
    augment = RandomCropFlip(padding=4)
    dy, dx, flip = augment.draw(4000, torch.Generator().manual_seed(0))
    assert set(dy.tolist()) == set(dx.tolist()) == set(range(9))  # 0..2p, as RandomCrop
    assert 0.45 < flip.float().mean().item() < 0.55
    again = augment.draw(4000, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip((dy, dx, flip), again, strict=True))
    with pytest.raises(ValueError, match="padding"):
        RandomCropFlip(padding=-1)


def test_padding_is_a_black_pixel_after_normalisation():
    fill = cifar10_module.train_augment().fill
    expected = [(0.0 - m) / s for m, s in zip(MEAN, STD, strict=True)]  # -1.9895, -1.9803, -1.7068
    assert fill == pytest.approx(expected, abs=1e-6)


# ---------------------------------------------------------------------------------------------
# Cached batches against the per-sample PIL pipeline


def _reference_sample(path: str, dy: int, dx: int, flip: bool) -> torch.Tensor:
    """What torchvision's RandomCrop(32, padding=4) + RandomHorizontalFlip + ToTensor +
    Normalize make of the image file for this draw (RandomCrop pads with fill 0, then crops
    at (dy, dx) of the padded image)."""
    image = Image.open(path).convert("RGB")
    image = TF.crop(TF.pad(image, 4, fill=0), dy, dx, 32, 32)
    if flip:
        image = TF.hflip(image)
    return NORMALIZE(image)


def test_cached_batches_equal_the_per_sample_pipeline_for_the_same_draws(tree: Path):
    data = _build(tree)
    assert data.in_memory and isinstance(data.train, TensorDataset)
    samples = datasets.ImageFolder(str(tree / "train")).samples  # the files, in label order
    seed, batch, epoch = 3, 32, 1
    loader = make_loader(data.train, batch, shuffle=True, seed=seed, augment=data.train_augment)
    assert isinstance(loader, TensorBatchLoader)
    loader.set_epoch(epoch)
    # The loader's draws: its epoch's order from a generator seeded with seed + epoch, then each
    # batch's crop offsets and flips from the same generator.
    generator = torch.Generator().manual_seed(seed + epoch)
    order = torch.randperm(len(samples), generator=generator)
    for b, (x, y) in zip(range(3), loader, strict=False):
        index = order[b * batch : (b + 1) * batch].tolist()
        dy, dx, flip = data.train_augment.draw(len(index), generator)
        assert flip.any() and not flip.all()  # both branches are compared
        expected = torch.stack(
            [
                _reference_sample(samples[i][0], int(dy[k]), int(dx[k]), bool(flip[k]))
                for k, i in enumerate(index)
            ]
        )
        assert torch.equal(x, expected)  # to the bit
        assert y.tolist() == [samples[i][1] for i in index]


def test_cache_without_augmentation_equals_the_per_sample_path(tree: Path):
    for options in ({}, {"train_subset": 25, "test_subset": 7}):
        cached = _build(tree, augment=False, **options)
        plain = build_datasets(
            "cifar10", root=str(tree), format="imagefolder", augment=False, **options
        )
        assert not plain.in_memory and cached.train_augment is None
        for ours, theirs in ((cached.train, plain.train), (cached.test, plain.test)):
            assert len(ours) == len(theirs)
            x = torch.stack([theirs[i][0] for i in range(len(theirs))])
            y = [theirs[i][1] for i in range(len(theirs))]
            assert torch.equal(ours.tensors[0], x)
            assert ours.tensors[1].tolist() == y
    # Evenly spaced subset of a class-sorted tree: every class is kept.
    assert sorted(set(cached.train.tensors[1].tolist())) == list(range(10))


def test_sharded_batches_are_the_single_process_batch(tree: Path):
    data = _build(tree)
    whole = make_loader(data.train, 10, shuffle=True, seed=0, augment=data.train_augment)
    parts = [
        make_loader(
            data.train, 10, shuffle=True, seed=0, augment=data.train_augment, rank=r, world_size=2
        )
        for r in range(2)
    ]
    for (x, y), (x0, y0), (x1, y1) in zip(whole, *parts, strict=True):
        assert torch.equal(torch.cat([x0, x1]), x) and torch.equal(torch.cat([y0, y1]), y)


# ---------------------------------------------------------------------------------------------
# The cache file: reuse, rebuild, corruption, location


def _cache_file(root: Path, split: str = "train", fmt: str = "imagefolder") -> Path:
    return root / LOCAL_FOLDER / f"cifar10-{fmt}-{split}.pt"


def test_second_build_reads_the_cache(tree: Path, decodes: _Counter):
    first = _build(tree, augment=False)
    assert (
        decodes.calls == 2 and _cache_file(tree).is_file() and _cache_file(tree, "test").is_file()
    )
    second = _build(tree, augment=False)
    assert decodes.calls == 2  # nothing decoded again
    assert torch.equal(first.train.tensors[0], second.train.tensors[0])
    # The file holds the decoded pixels as uint8 N x 3 x 32 x 32, loadable weights-only.
    payload = torch.load(_cache_file(tree), weights_only=True)
    assert payload["images"].shape == (10 * TRAIN_PER_CLASS, 3, 32, 32)
    assert payload["images"].dtype == torch.uint8 and payload["count"] == 10 * TRAIN_PER_CLASS
    assert payload["classes"] == list(CLASSES)
    first_image = np.asarray(Image.open(tree / "train" / "airplane" / "0000.jpg").convert("RGB"))
    assert np.array_equal(payload["images"][0].permute(1, 2, 0).numpy(), first_image)


def test_cache_is_rebuilt_when_a_source_image_changes(tree: Path, decodes: _Counter):
    _build(tree, augment=False)
    assert decodes.calls == 2
    changed = tree / "train" / "bird" / "0003.jpg"
    before = changed.stat()
    new = np.full((32, 32, 3), (10, 200, 30), dtype=np.uint8)
    Image.fromarray(new).save(changed)
    # An edit made later than the first write (a test this fast may fall in the same tick of
    # the file system's clock, which the size-and-time fingerprint could not see).
    os.utime(changed, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))
    data = _build(tree, augment=False)
    assert decodes.calls == 3  # the train split again; the test split's cache still holds
    index = 2 * TRAIN_PER_CLASS + 3  # class 2 (bird), image 3
    decoded = np.asarray(Image.open(changed).convert("RGB"))
    assert torch.equal(data.train.tensors[0][index], NORMALIZE(Image.fromarray(decoded)))
    # A new file (another count and fingerprint) also rebuilds.
    Image.fromarray(_pixels(7)).save(tree / "train" / "cat" / "9999.jpg")
    data = _build(tree, augment=False)
    assert decodes.calls == 4 and len(data.train) == 10 * TRAIN_PER_CLASS + 1


def test_a_truncated_cache_file_is_rebuilt_with_a_warning(tree: Path, decodes: _Counter):
    first = _build(tree, augment=False)
    path = _cache_file(tree)
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size // 2)
    with pytest.warns(UserWarning, match=rf"ignoring the cache file {path} \(corrupt: it does"):
        again = _build(tree, augment=False)
    assert decodes.calls == 3  # the train split decoded again
    assert path.stat().st_size == size  # the rebuilt file replaced it
    assert torch.equal(first.train.tensors[0], again.train.tensors[0])
    assert torch.load(path, weights_only=True)["count"] == 10 * TRAIN_PER_CLASS


def test_damaged_tensor_data_fails_the_checksum_and_is_rebuilt(tree: Path, decodes: _Counter):
    first = _build(tree, augment=False)
    path = _cache_file(tree)
    payload = torch.load(path, weights_only=True)
    payload["images"][5, 1, 2, 3] ^= 1  # one bit of one pixel, checksum left as it was
    torch.save(payload, path)
    with pytest.warns(UserWarning, match="checksum mismatch"):
        again = _build(tree, augment=False)
    assert decodes.calls == 3
    assert torch.equal(first.train.tensors[0], again.train.tensors[0])


class _Planted:
    """An object whose unpickling would create a file: what a crafted cache could do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_cache_file_holding_other_objects_is_not_unpickled(tree: Path, decodes: _Counter):
    _build(tree, augment=False)
    path, marker = _cache_file(tree), tree.parent / "was-executed"
    payload = torch.load(path, weights_only=True)
    payload["extra"] = _Planted(marker)
    torch.save(payload, path)
    with pytest.warns(UserWarning, match="corrupt: it does not load"):
        _build(tree, augment=False)
    assert not marker.exists() and decodes.calls == 3


def test_a_corrupt_cache_that_cannot_be_rebuilt_is_a_clear_error(tree: Path, tmp_path: Path):
    cache_dir = tmp_path / "cache"
    _build(tree, augment=False, cache_dir=str(cache_dir))
    path = cache_dir / "cifar10-imagefolder-train.pt"
    path.write_bytes(path.read_bytes()[:1000])
    cache_dir.chmod(0o555)  # read-only by its mode bits, which count even for root
    try:
        with pytest.raises(DataCorruptError) as info:
            _build(tree, augment=False, cache_dir=str(cache_dir))
    finally:
        cache_dir.chmod(0o755)
    message = str(info.value)
    assert f"the cache file {path} is corrupt" in message
    assert f"Fix: delete {path}" in message and "dataset.cache_dir" in message


def test_no_writable_cache_folder_is_refused_before_decoding(
    tree: Path, tmp_path: Path, decodes: _Counter
):
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir(mode=0o555)
    try:
        with pytest.raises(ConfigError, match=rf"{cache_dir} \(read-only\).*dataset.cache_dir"):
            _build(tree, cache_dir=str(cache_dir))
    finally:
        cache_dir.chmod(0o755)
    assert decodes.calls == 0


def test_a_read_only_data_folder_uses_the_user_cache(
    tree: Path, tmp_path: Path, monkeypatch, decodes: _Counter
):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    expected = folders(tree, None)[1]
    assert expected.parent == tmp_path / "xdg" / "sparsenet"
    assert expected.name.startswith("cifar10-jpeg-")
    tree.chmod(0o555)
    try:
        _build(tree, augment=False)
        assert not (tree / LOCAL_FOLDER).exists()
        assert (expected / "cifar10-imagefolder-train.pt").is_file()
        _build(tree, augment=False)
    finally:
        tree.chmod(0o755)
    assert decodes.calls == 2  # the second build read the user cache


def test_a_corrupt_cache_in_a_read_only_folder_is_bypassed_with_a_warning(
    tree: Path, tmp_path: Path, monkeypatch, decodes: _Counter
):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    _build(tree, augment=False)
    path = _cache_file(tree)
    path.write_bytes(b"not a zip file")
    path.parent.chmod(0o555)
    try:
        with pytest.warns(UserWarning, match=rf"ignoring the cache file {path} .*rebuilding"):
            _build(tree, augment=False)
        fallback = folders(tree, None)[1] / path.name
        assert fallback.is_file() and decodes.calls == 3
        with pytest.warns(UserWarning, match=rf"ignoring .*{path} .*using {fallback}; delete"):
            _build(tree, augment=False)
    finally:
        path.parent.chmod(0o755)
    assert decodes.calls == 3


def test_an_image_that_does_not_decode_stops_the_build_and_is_named(tree: Path):
    bad = tree / "train" / "dog" / "0001.jpg"
    bad.write_bytes(b"\xff\xd8\xff" + bytes(range(256)) * 4)  # a JPEG marker, then noise
    with pytest.raises(DataCorruptError, match=rf"^cannot read image {bad}: .*replace or remove"):
        _build(tree)
    assert not _cache_file(tree).exists()


def test_an_image_of_another_size_is_named(tree: Path):
    odd = tree / "train" / "ship" / "0002.jpg"
    Image.new("RGB", (30, 32)).save(odd)
    with pytest.raises(ConfigError, match=rf"{odd} is 30x32, expected 32x32"):
        _build(tree)


# ---------------------------------------------------------------------------------------------
# The torchvision python batches


def _write_batches(root: Path, sizes=(3, 4, 2, 5, 3), test_size: int = 6) -> dict:
    """cifar-10-batches-py/ in the CIFAR format: pickled dicts with 'data' (N x 3072 uint8,
    rows = 1024 red, 1024 green, 1024 blue values) and 'labels'. Returns what was written."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    written = {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name, n in zip(names, (*sizes, test_size), strict=True):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, n).tolist()
        entry = {"batch_label": name, "labels": labels, "data": data, "filenames": [b"x.png"] * n}
        (folder / name).write_bytes(pickle.dumps(entry))
        written[name] = (data, labels)
    meta = {"label_names": list(CLASSES), "num_cases_per_batch": 10000, "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta))
    return written


def _expected(written: dict, names: list[str]) -> tuple[torch.Tensor, list[int]]:
    data = np.concatenate([written[n][0] for n in names]).astype(np.float64) / 255
    x = data.reshape(-1, 3, 32, 32)
    x = (x - np.array(MEAN)[:, None, None]) / np.array(STD)[:, None, None]
    return torch.from_numpy(x), sum((written[n][1] for n in names), [])


@pytest.mark.filterwarnings("ignore:.*md5 differs")
def test_torchvision_batches_are_cached(tmp_path: Path, monkeypatch):
    written = _write_batches(tmp_path)
    data = build_datasets("cifar10", root=str(tmp_path), download=False, cache=True, augment=False)
    assert data.in_memory and (len(data.train), len(data.test)) == (17, 6)
    x, y = _expected(written, [f"data_batch_{i}" for i in range(1, 6)])
    assert torch.allclose(data.train.tensors[0].double(), x, atol=1e-6)
    assert data.train.tensors[1].tolist() == y
    x, y = _expected(written, ["test_batch"])
    assert torch.allclose(data.test.tensors[0].double(), x, atol=1e-6)
    assert data.test.tensors[1].tolist() == y
    assert _cache_file(tmp_path, "train", "torchvision").is_file()
    # Subsets are the first N samples.
    part = build_datasets(
        "cifar10", root=str(tmp_path), download=False, cache=True, train_subset=5, test_subset=2
    )
    assert torch.equal(part.train.tensors[0], data.train.tensors[0][:5])
    assert part.test.tensors[1].tolist() == y[:2]
    # torchvision's own reader (told to skip its md5 check of the published files) agrees.
    monkeypatch.setattr(cifar_module, "check_integrity", lambda *args, **kwargs: True)
    theirs = datasets.CIFAR10(str(tmp_path), train=True, download=False)
    decoded = torch.load(_cache_file(tmp_path, "train", "torchvision"), weights_only=True)
    assert np.array_equal(decoded["images"].permute(0, 2, 3, 1).numpy(), theirs.data)
    assert decoded["labels"].tolist() == theirs.targets


@pytest.mark.filterwarnings("ignore:.*md5 differs")
def test_a_changed_batch_file_rebuilds_the_cache(tmp_path: Path, monkeypatch):
    _write_batches(tmp_path)
    calls = _Counter(cifar10_module._decode_batches)
    monkeypatch.setattr(cifar10_module, "_decode_batches", calls)
    build_datasets("cifar10", root=str(tmp_path), download=False, cache=True)
    build_datasets("cifar10", root=str(tmp_path), download=False, cache=True)
    assert calls.calls == 2  # train and test, once
    _write_batches(tmp_path / "other", sizes=(1, 1, 1, 1, 1))
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    batch.write_bytes((tmp_path / "other" / "cifar-10-batches-py" / "data_batch_2").read_bytes())
    data = build_datasets("cifar10", root=str(tmp_path), download=False, cache=True)
    assert calls.calls == 3 and len(data.train) == 3 + 1 + 2 + 5 + 3


def test_a_batch_file_with_code_in_it_is_refused(tmp_path: Path):
    _write_batches(tmp_path)
    marker = tmp_path / "was-executed"
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    batch.write_bytes(pickle.dumps({"data": _Planted(marker), "labels": []}))
    with pytest.warns(UserWarning, match="md5"), pytest.raises(DataCorruptError) as info:
        build_datasets("cifar10", root=str(tmp_path), download=False, cache=True)
    assert str(info.value).startswith(f"cifar10: cannot read {batch} (UnpicklingError: global")
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------
# The real JPEG copy


@pytest.mark.realdata
def test_real_cifar10_jpeg_cache(real_data_root: Path, tmp_path: Path):
    """Counts and pixel statistics of the JPEG copy, measured once with torchvision's
    ImageFolder + ToTensor (train mean 0.4913 0.4821 0.4465, std 0.2452 0.2428 0.2606;
    5,000 train / 1,000 test images a class)."""
    root = real_data_root / "cifar10-jpeg"
    if not root.is_dir():
        pytest.skip(f"no {root}")
    data = _build(root, augment=False, cache_dir=str(tmp_path / "cache"))
    train = torch.load(tmp_path / "cache" / "cifar10-imagefolder-train.pt", weights_only=True)
    assert (len(data.train), len(data.test)) == (50_000, 10_000)
    assert torch.bincount(train["labels"]).tolist() == [5000] * 10
    assert torch.bincount(data.test.tensors[1]).tolist() == [1000] * 10
    pixels = train["images"].double() / 255
    assert pixels.mean(dim=(0, 2, 3)).tolist() == pytest.approx([0.4913, 0.4821, 0.4465], abs=1e-4)
    assert pixels.std(dim=(0, 2, 3)).tolist() == pytest.approx([0.2452, 0.2428, 0.2606], abs=1e-4)
