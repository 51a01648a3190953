"""A CNN of paper B's MNIST size, standing in for its unpublished ~332k-parameter network.

    conv1 32@5x5 -> ReLU -> maxpool 2 -> conv2 64@5x5 -> ReLU -> maxpool 2 -> flatten
    -> fc1 270 -> ReLU -> fc2

On 1x28x28: 28 -> 24 -> 12 -> 8 -> 4, so fc1 sees 64*4*4 = 1,024 features; 331,556 parameters,
0.13% fewer than paper B's 331,984 (832 + 51,264 + 276,750 + 2,710).

[choice] Paper B gives only the parameter count. This is LeNet-5's layout widened to the common
32-64 conv widths, fc1 sized to match the count; no BatchNorm, so a filter whose weights went
to zero is dead (BatchNorm would rescale it back).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

from sparsenet.errors import ConfigError
from sparsenet.models import register_model


@register_model("cnn332k")
def cnn332k(
    num_classes: int = 10, input_shape: Sequence[int] = (1, 28, 28), hidden: int = 270
) -> nn.Module:
    """conv 32-64 (5x5) + fc `hidden`; 331,556 params on 1x28x28 with 10 classes."""
    channels, height, width = input_shape
    h, w = ((height - 4) // 2 - 4) // 2, ((width - 4) // 2 - 4) // 2
    if h < 1 or w < 1:
        raise ConfigError(
            "input_shape", list(input_shape), "is too small for cnn332k", "16x16 or more"
        )
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(channels, 32, kernel_size=5),
            relu1=nn.ReLU(),
            pool1=nn.MaxPool2d(2),
            conv2=nn.Conv2d(32, 64, kernel_size=5),
            relu2=nn.ReLU(),
            pool2=nn.MaxPool2d(2),
            flatten=nn.Flatten(),
            fc1=nn.Linear(64 * h * w, hidden),
            relu3=nn.ReLU(),
            fc2=nn.Linear(hidden, num_classes),
        )
    )
