"""CIFAR ResNets (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, sec. 4.2).

    conv3x3 16 -> BN -> ReLU
    -> stage1: n basic blocks, 16 channels, 32x32
    -> stage2: n basic blocks, 32 channels, 16x16 (first block stride 2)
    -> stage3: n basic blocks, 64 channels,  8x8  (first block stride 2)
    -> global avg-pool -> flatten -> Linear(64, num_classes)
depth = 6n + 2: ResNet-20 has n = 3, ResNet-56 has n = 9.
Basic block: conv3x3 -> BN -> ReLU -> conv3x3 -> BN, + shortcut, -> ReLU.

Documented choice: shortcut option B (a 1x1 conv + BN projection where the shape changes,
identity elsewhere). He et al. used option A on CIFAR (identity with zero-padded channels and
stride-2 subsampling, no parameters). Option A's padding is a functional op that hides the
channel coupling from torch-pruning's DependencyGraph; with option B every residual add joins
plain modules, so a channel group spans the whole stage and can be regularized and removed as one.
Option B adds 2 projections: (16*32 + 2*32) + (32*64 + 2*64) = 576 + 2,176 = 2,752 params.

Parameters at 10 classes: ResNet-20 272,474 (option A: 269,722); ResNet-56 855,770
(option A: 853,018).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from sparsenet.errors import ConfigError
from sparsenet.models import register_model


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus shortcut, then ReLU; 1x1 conv+BN projection if needed."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """He et al.'s 6n+2-layer CIFAR ResNet with 16/32/64-channel stages (option B shortcuts)."""

    def __init__(self, blocks_per_stage: int, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        stages, channels = [], 16
        for stage, width in enumerate((16, 32, 64)):
            blocks = []
            for i in range(blocks_per_stage):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(channels, width, stride))
                channels = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(64, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.avgpool(x)))


def resnet_cifar(
    depth: int, num_classes: int = 10, input_shape: Sequence[int] = (3, 32, 32)
) -> CifarResNet:
    """A CIFAR ResNet of depth 6n + 2 (20, 32, 44, 56, 110, ...)."""
    if depth < 8 or (depth - 2) % 6:
        raise ConfigError("depth", depth, "is not a CIFAR ResNet depth", "6n + 2 with n >= 1")
    return CifarResNet((depth - 2) // 6, num_classes, in_channels=int(input_shape[0]))


@register_model("resnet20")
def resnet20(num_classes: int = 10, input_shape: Sequence[int] = (3, 32, 32)) -> nn.Module:
    """ResNet-20 (n = 3), option B shortcuts; 272,474 params at 10 classes."""
    return resnet_cifar(20, num_classes, input_shape)


@register_model("resnet56")
def resnet56(num_classes: int = 10, input_shape: Sequence[int] = (3, 32, 32)) -> nn.Module:
    """ResNet-56 (n = 9), option B shortcuts; 855,770 params at 10 classes."""
    return resnet_cifar(56, num_classes, input_shape)
