"""Batches for the training loop: a tensor slicer for in-memory data, a DataLoader otherwise.

Why two paths: with torchvision's MNIST dataset every sample goes uint8 tensor -> PIL image ->
ToTensor -> Normalize in Python, one at a time, and for LeNet-sized models that per-sample
decoding, not the forward pass, is most of an epoch. The MNIST-family builders therefore return
`TensorDataset`s already normalised, and `TensorBatchLoader` serves a batch as one indexing
operation on the stacked tensors (held on the training device when they are small enough).

Reproducibility: the slicer draws each epoch's order with `torch.randperm` from a generator
seeded with seed + epoch, so a run's batch order depends only on the seed (not on the global
RNG, which the model's initialisation also consumes). The DataLoader's generator is re-seeded
with seed + epoch at the start of each epoch (it also seeds the workers); both loaders have
`set_epoch`, so a resumed run sees the batches an uninterrupted one would have seen.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from sparsenet.errors import ConfigError, UserInputError

# Tensors up to this size are copied to the training device once, up front (MNIST's training set
# is 188 MB); larger ones stay on the CPU and each batch is moved by the training loop.
DEVICE_COPY_LIMIT_BYTES = 1 << 30


class TensorBatchLoader:
    """Iterate over a TensorDataset in batches by indexing its tensors directly.

    len() is the number of batches per epoch; each `iter()` starts a new epoch (shuffled with a
    generator seeded with seed + epoch). `set_epoch` sets the epoch explicitly, e.g. on resume.
    """

    def __init__(
        self,
        dataset: TensorDataset,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int,
        device: torch.device | str = "cpu",
        drop_last: bool = False,
        augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size={batch_size} must be at least 1")
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.augment = augment
        self.epoch = 0
        device = torch.device(device)
        size = sum(t.numel() * t.element_size() for t in dataset.tensors)
        target = device if size <= DEVICE_COPY_LIMIT_BYTES else torch.device("cpu")
        self.tensors = tuple(t.to(target) for t in dataset.tensors)
        self.num_samples = len(dataset)

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        stop = len(self) * self.batch_size
        if not self.shuffle:
            # Slices are views: no copy at all for evaluation.
            for start in range(0, min(stop, self.num_samples), self.batch_size):
                yield tuple(t[start : start + self.batch_size] for t in self.tensors)
            return
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        self.epoch += 1
        order = torch.randperm(self.num_samples, generator=generator).to(self.tensors[0].device)
        for start in range(0, min(stop, self.num_samples), self.batch_size):
            index = order[start : start + self.batch_size]
            batch = tuple(t[index] for t in self.tensors)
            if self.augment is not None:
                batch = (self.augment(batch[0], generator), *batch[1:])
            yield batch


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    num_workers: int = 0,
    device: torch.device | str = "cpu",
    pin_memory: bool = False,
    drop_last: bool = False,
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
) -> TensorBatchLoader | EpochSeededDataLoader:
    """A TensorBatchLoader for an in-memory TensorDataset, else a seeded DataLoader.

    num_workers and pin_memory apply to the DataLoader only (an in-memory dataset needs no
    workers; its batches are fresh tensors from indexing, so pinning the source would not help).
    `augment` (in-memory data only) transforms each shuffled batch's inputs.
    """
    if isinstance(dataset, TensorDataset):
        return TensorBatchLoader(
            dataset,
            batch_size,
            shuffle=shuffle,
            seed=seed,
            device=device,
            drop_last=drop_last,
            augment=augment,
        )
    return EpochSeededDataLoader(
        dataset,
        seed=seed,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=pin_memory,
        drop_last=drop_last,
    )


class EpochSeededDataLoader(DataLoader):
    """A DataLoader whose shuffle order and worker seeds for epoch e come from seed + e alone,
    so a run resumed at epoch e sees the batches an uninterrupted run would have seen."""

    def __init__(self, dataset: Dataset, *, seed: int, **kwargs) -> None:
        super().__init__(dataset, generator=torch.Generator().manual_seed(seed), **kwargs)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        self.generator.manual_seed(self.seed + self.epoch)
        self.epoch += 1
        return _own_messages(super().__iter__())


def _own_messages(batches: Iterator) -> Iterator:
    """The batches; a UserInputError raised in a worker (an image that does not decode)
    arrives re-raised with the worker's traceback as its text: keep its own message only."""
    try:
        yield from batches
    except UserInputError as error:
        text = str(error).rstrip()
        if "Traceback (most recent call last)" not in text:
            raise
        own = text.splitlines()[-1].split(": ", 1)[-1]
        raise type(error)(own) from None
