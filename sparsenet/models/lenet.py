"""LeNet-5 as in Caffe's MNIST example (the "20-50-500" LeNet used by SSL, Wen et al. 2016).

    conv1 20@5x5 -> maxpool 2 -> conv2 50@5x5 -> maxpool 2 -> flatten -> fc1 500 -> ReLU -> fc2

On 1x28x28: 28 -> 24 -> 12 -> 8 -> 4, so fc1 sees 50*4*4 = 800 features; 431,080 parameters.

Documented choice: a ReLU follows each conv. Caffe's prototxt has no non-linearity after the
convs (only max-pooling); adding ReLU is the common PyTorch port, and it gives "dead filter"
its usual meaning. It changes no parameter count.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

from sparsenet.errors import ConfigError
from sparsenet.models import register_model


def _conv_pool_size(size: int) -> int:
    """Spatial size after conv 5x5 (no padding) + maxpool 2, twice."""
    return ((size - 4) // 2 - 4) // 2


@register_model("lenet5")
def lenet5(num_classes: int = 10, input_shape: Sequence[int] = (1, 28, 28)) -> nn.Module:
    """Caffe LeNet-5 (20-50-500) with ReLU after the convs; 431,080 params on 1x28x28."""
    channels, height, width = input_shape
    h, w = _conv_pool_size(height), _conv_pool_size(width)
    if h < 1 or w < 1:
        raise ConfigError(
            "input_shape", list(input_shape), "is too small for lenet5", "16x16 or more"
        )
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(channels, 20, kernel_size=5),
            relu1=nn.ReLU(),
            pool1=nn.MaxPool2d(2),
            conv2=nn.Conv2d(20, 50, kernel_size=5),
            relu2=nn.ReLU(),
            pool2=nn.MaxPool2d(2),
            flatten=nn.Flatten(),
            fc1=nn.Linear(50 * h * w, 500),
            relu3=nn.ReLU(),
            fc2=nn.Linear(500, num_classes),
        )
    )
