"""ImageNet ResNets from torchvision (He et al., CVPR 2016, table 1), randomly initialised.

resnet18 (basic blocks 2-2-2-2) has 11,689,512 parameters and resnet50 (bottlenecks 3-4-6-3)
25,557,032 at 1000 classes. Shortcuts are torchvision's 1x1 conv + BN projections (option B).

Documented choice: for inputs with other than 3 channels the stem conv is rebuilt with
`input_shape[0]` input channels; nothing else depends on the input size (adaptive avg-pool).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn
from torchvision import models as tvm

from sparsenet.models import register_model


def _build(
    builder: Callable[..., tvm.ResNet], num_classes: int, input_shape: Sequence[int]
) -> tvm.ResNet:
    model = builder(weights=None, num_classes=num_classes)
    channels = int(input_shape[0])
    if channels != 3:
        stem = model.conv1
        model.conv1 = nn.Conv2d(
            channels, stem.out_channels, stem.kernel_size, stem.stride, stem.padding, bias=False
        )
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    return model


@register_model("resnet18")
def resnet18(num_classes: int = 1000, input_shape: Sequence[int] = (3, 224, 224)) -> nn.Module:
    """torchvision ResNet-18; 11,689,512 params at 1000 classes."""
    return _build(tvm.resnet18, num_classes, input_shape)


@register_model("resnet50")
def resnet50(num_classes: int = 1000, input_shape: Sequence[int] = (3, 224, 224)) -> nn.Module:
    """torchvision ResNet-50; 25,557,032 params at 1000 classes."""
    return _build(tvm.resnet50, num_classes, input_shape)
