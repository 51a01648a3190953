"""Synthetic data for smoke runs and tests: no files, in memory, deterministic, learnable.

Each class c has a fixed random prototype P_c ~ N(0, 1) of shape image_shape; a sample of
class y is x = P_y + e, e ~ N(0, 1), with y uniform. Everything is drawn from one
`torch.Generator` seeded with `seed`, train and test from the same prototypes.

A documented choice against torchvision's `FakeData`: its labels are drawn independently of the
images, so a smoke run cannot tell a working training loop from a broken one (both stay at
chance), and its images pass through an 8-bit PIL conversion of N(0, 1) floats, which wraps the
negative half. Here a correct loop climbs well above chance within a few epochs (LeNet-5,
SGD, 3 epochs of the default 256 samples: about 60% test accuracy against 10% chance).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import TensorDataset

from sparsenet.config.checks import Integer, Sizes
from sparsenet.data import DataSplits, register_dataset
from sparsenet.data._common import check_subset


def make_prototype_data(
    image_shape: Sequence[int], classes: int, sizes: Sequence[int], seed: int
) -> list[TensorDataset]:
    """One TensorDataset (x float32, y int64) per entry of `sizes`, sharing class prototypes."""
    generator = torch.Generator().manual_seed(seed)
    shape = tuple(int(d) for d in image_shape)
    prototypes = torch.randn(classes, *shape, generator=generator)
    splits = []
    for size in sizes:
        y = torch.randint(classes, (size,), generator=generator)
        x = prototypes[y] + torch.randn(size, *shape, generator=generator)
        splits.append(TensorDataset(x, y))
    return splits


@register_dataset("fake")
def fake(
    image_shape: Sequence[int] = (1, 28, 28),
    classes: int = 10,
    train_size: int = 256,
    test_size: int = 128,
    seed: int = 0,
    train_subset: int | None = None,
    test_subset: int | None = None,
) -> DataSplits:
    """Prototype-plus-noise images (see the module docstring).

    `classes` rather than `num_classes`: the config's `num_classes` key is for interpolation
    into the model config and is checked against the result, not passed here (fake.yaml ties
    the two together).
    """
    image_shape = Sizes(length=3, what="C, H, W")("image_shape", image_shape)
    classes = Integer(low=2)("classes", classes)
    train_size = Integer(low=1)("train_size", train_size)
    test_size = Integer(low=1)("test_size", test_size)
    train, test = make_prototype_data(image_shape, classes, (train_size, test_size), seed)
    n_train = check_subset(train_subset, train_size, "train_subset")
    n_test = check_subset(test_subset, test_size, "test_subset")
    return DataSplits(
        train=TensorDataset(*(t[:n_train] for t in train.tensors)),
        test=TensorDataset(*(t[:n_test] for t in test.tensors)),
        num_classes=classes,
        input_shape=tuple(int(d) for d in image_shape),
        in_memory=True,
    )
