"""VGG-16 with BatchNorm, CIFAR variant (Simonyan & Zisserman 2015, config D; CIFAR form as in
kuangliu/pytorch-cifar and the network-slimming code of Liu et al. 2017).

    features: 64,64,M, 128,128,M, 256,256,256,M, 512,512,512,M, 512,512,512,M
              (each number: conv3x3 pad 1 -> BatchNorm -> ReLU; M: maxpool 2)
    head:     adaptive avg-pool to 1x1 -> flatten -> Linear(512, num_classes)

Documented choices:
- Classifier: a single Linear(512, num_classes). Li et al. ("Pruning Filters for Efficient
  ConvNets", 2017) use 512 -> 512 -> 10 instead; the single layer keeps the net all-conv so the
  filter counts are the whole story.
- Convs have no bias: BatchNorm's shift makes it redundant (and it would be a parameter that
  filter-group regularizers never see).
- Adaptive pooling: at 32x32 the features are already 1x1 (it is the identity); larger inputs
  (>= 32) are averaged, so the parameter count does not depend on the input size.
- Init: Kaiming normal (fan_out) for convs, BN weight 1 / bias 0, as torchvision's VGG.

Parameters at 10 classes: 14,724,042 (convs 14,710,464 + BN 8,448 + fc 5,130).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

from sparsenet.errors import ConfigError
from sparsenet.models import register_model

VGG16_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)  # fmt: skip


def make_vgg_features(cfg: Sequence[int | str], in_channels: int) -> nn.Sequential:
    """conv3x3+BN+ReLU per number, maxpool per "M"; layers named conv{block}_{i}, pool{block}."""
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    block, index = 1, 1
    for item in cfg:
        if item == "M":
            layers[f"pool{block}"] = nn.MaxPool2d(2)
            block, index = block + 1, 1
            continue
        suffix = f"{block}_{index}"
        layers[f"conv{suffix}"] = nn.Conv2d(in_channels, int(item), 3, padding=1, bias=False)
        layers[f"bn{suffix}"] = nn.BatchNorm2d(int(item))
        layers[f"relu{suffix}"] = nn.ReLU()
        in_channels, index = int(item), index + 1
    return nn.Sequential(layers)


def _init_weights(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


@register_model("vgg16")
def vgg16(num_classes: int = 10, input_shape: Sequence[int] = (3, 32, 32)) -> nn.Module:
    """CIFAR VGG-16-BN with a Linear(512, num_classes) head; 14,724,042 params at 10 classes."""
    channels, height, width = input_shape
    if min(height, width) < 32:
        raise ConfigError(
            "input_shape",
            list(input_shape),
            "is too small for vgg16's five 2x2 max-pools",
            "32x32 or more",
        )
    model = nn.Sequential(
        OrderedDict(
            features=make_vgg_features(VGG16_CFG, channels),
            avgpool=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(),
            classifier=nn.Linear(512, num_classes),
        )
    )
    _init_weights(model)
    return model
