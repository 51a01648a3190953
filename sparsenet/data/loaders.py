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

Sharding (data-parallel runs, `rank` of `world_size` processes): `batch_size` is the global
batch. Every process draws the same order and takes its contiguous part of each global batch
(`shard_bounds`), so together the processes see exactly the batches of a single process, and
all take the same number of steps. A last batch that does not split evenly is split as evenly
as possible (the first processes take one sample more; one may take none when the batch is
smaller than the world); the training loop weights each process's loss by its share, so the
averaged gradient is still the batch's mean (see sparsenet/pipeline/engine.py). Evaluation
loaders shard the same way (every sample is evaluated once, by one process).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from functools import partial

import numpy as np
import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
    TensorDataset,
)

from sparsenet.errors import ConfigError, UserInputError

# Tensors up to this size are copied to the training device once, up front (MNIST's training set
# is 188 MB); larger ones stay on the CPU and each batch is moved by the training loop.
DEVICE_COPY_LIMIT_BYTES = 1 << 30


def shard_bounds(size: int, rank: int, world_size: int) -> tuple[int, int]:
    """[start, stop) of process `rank`'s part of a batch of `size`: contiguous parts, the first
    size % world_size of them one longer (rank 0's part is empty only for an empty batch)."""
    base, extra = divmod(size, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


def _check_rank(rank: int, world_size: int) -> None:
    if not 0 <= rank < world_size:
        raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")


def _global_batch_sizes(num_samples: int, batch_size: int, batches: int) -> list[int]:
    return [min(batch_size, num_samples - b * batch_size) for b in range(batches)]


class TensorBatchLoader:
    """Iterate over a TensorDataset in batches by indexing its tensors directly.

    len() is the number of batches per epoch; each `iter()` starts a new epoch (shuffled with a
    generator seeded with seed + epoch). `set_epoch` sets the epoch explicitly, e.g. on resume.
    With world_size > 1 each batch is this process's part of the global batch (module
    docstring); `augment` then transforms the whole global batch before it is cut, so each
    sample gets the random draw it gets in a single process.
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
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size={batch_size} must be at least 1")
        _check_rank(rank, world_size)
        self.rank, self.world_size = rank, world_size
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

    def global_batch_sizes(self) -> list[int]:
        """Size of each global batch of an epoch (all processes together)."""
        return _global_batch_sizes(self.num_samples, self.batch_size, len(self))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        starts = range(0, len(self) * self.batch_size, self.batch_size)
        if not self.shuffle:
            # Slices are views: no copy at all for evaluation.
            for start in starts:
                size = min(self.batch_size, self.num_samples - start)
                lo, hi = shard_bounds(size, self.rank, self.world_size)
                yield tuple(t[start + lo : start + hi] for t in self.tensors)
            return
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        self.epoch += 1
        order = torch.randperm(self.num_samples, generator=generator).to(self.tensors[0].device)
        for start in starts:
            index = order[start : start + self.batch_size]
            lo, hi = shard_bounds(len(index), self.rank, self.world_size)
            if self.augment is None:
                yield tuple(t[index[lo:hi]] for t in self.tensors)
                continue
            x = self.augment(self.tensors[0][index], generator)[lo:hi]
            yield (x, *(t[index[lo:hi]] for t in self.tensors[1:]))


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
    rank: int = 0,
    world_size: int = 1,
) -> TensorBatchLoader | EpochSeededDataLoader:
    """A TensorBatchLoader for an in-memory TensorDataset, else a seeded DataLoader.

    num_workers and pin_memory apply to the DataLoader only (an in-memory dataset needs no
    workers; its batches are fresh tensors from indexing, so pinning the source would not help).
    `augment` (in-memory data only) transforms each shuffled batch's inputs. With world_size
    > 1, `batch_size` is the global batch and the loader yields process `rank`'s parts.
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
            rank=rank,
            world_size=world_size,
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
        rank=rank,
        world_size=world_size,
    )


class _RankParts(Sampler[list[int]]):
    """Process `rank`'s part of each global batch of `batches`."""

    def __init__(self, batches: BatchSampler, rank: int, world_size: int) -> None:
        self.batches, self.rank, self.world_size = batches, rank, world_size

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches:
            lo, hi = shard_bounds(len(batch), self.rank, self.world_size)
            yield batch[lo:hi]


def _reseed_worker(worker_id: int, rank: int) -> None:
    """Offset a worker's seeds by the process rank: worker k of every process would otherwise
    draw the same random augmentation for its samples."""
    seed = (torch.initial_seed() + rank * 1_000_003) % 2**63
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


class EpochSeededDataLoader(DataLoader):
    """A DataLoader whose shuffle order and worker seeds for epoch e come from seed + e alone,
    so a run resumed at epoch e sees the batches an uninterrupted run would have seen.

    The batches are those of DataLoader(batch_size, shuffle, drop_last) with this generator;
    with world_size > 1 each is cut to process `rank`'s part (module docstring)."""

    def __init__(
        self,
        dataset: Dataset,
        *,
        seed: int,
        batch_size: int = 1,
        shuffle: bool = False,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        **kwargs,
    ) -> None:
        _check_rank(rank, world_size)
        generator = torch.Generator().manual_seed(seed)
        order = (
            RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
        )
        batches = _RankParts(BatchSampler(order, batch_size, drop_last), rank, world_size)
        if rank > 0 and kwargs.get("num_workers", 0) > 0:
            kwargs.setdefault("worker_init_fn", partial(_reseed_worker, rank=rank))
        super().__init__(dataset, batch_sampler=batches, generator=generator, **kwargs)
        self.seed = seed
        self.epoch = 0
        self.global_batch_size = batch_size
        self.rank, self.world_size = rank, world_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def global_batch_sizes(self) -> list[int]:
        """Size of each global batch of an epoch (all processes together)."""
        return _global_batch_sizes(len(self.dataset), self.global_batch_size, len(self))

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
