"""Any torchvision classification architecture (`model=torchvision model.arch=mobilenet_v2`).

`arch` is a name of `torchvision.models.list_models(module=torchvision.models)` (mobilenet_v2,
efficientnet_b0, regnet_x_400mf, shufflenet_v2_x1_0, resnet18, vgg16_bn, ...), built by
torchvision with random weights and `num_classes` outputs, then adapted to the dataset:

- Input channels: the *stem conv* (the first Conv2d in module order, the one that sees the
  image) is rebuilt with `input_shape[0]` input channels when that is not 3 (its other
  settings kept, freshly initialised).
- Small inputs (height and width <= `SMALL_INPUT` = 64 px, i.e. MNIST and CIFAR): the stem's
  downsampling is removed. ImageNet stems reduce the image 2x (MobileNet, EfficientNet,
  RegNet, MnasNet: a stride-2 conv) or 4x (ResNet, ShuffleNet, DenseNet, GoogLeNet: a
  stride-2 conv and a max-pool), which leaves 1x1 maps at 32 px before the last stage. Rule:
  if the stem conv has a stride > 1 it gets stride 1, and a MaxPool2d that follows it before
  the next conv becomes an identity. The kernel is kept, so ImageNet weights of the stem still
  fit (`model.weights=IMAGENET1K_V1`). This is the usual CIFAR form of these nets (e.g.
  kuangliu/pytorch-cifar's ResNet and MobileNetV2 stems) reduced to the one change every
  family shares; later strides are the architecture's own. A stem that does not downsample
  (VGG) is left as it is.
- Classes: torchvision's builder sizes the classifier (the last Linear, or SqueezeNet's final
  conv) for `num_classes`.
- GoogLeNet and Inception-v3 are built without their auxiliary classifiers (a training-mode
  forward must return logits, not a tuple).

Before the model is returned it is checked: one forward pass of a zero input of
`input_shape`, and a trace of torch-pruning's dependency graph into unit groups
(`sparsenet.pruning.check_prunable`). An architecture that cannot run at this input size or
that the graph cannot trace stops the run here, with one line naming `model.arch`, before any
data is read (a model built on the meta device, as `load_pruned` does to read shapes, is not
checked: it has no values to run).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from functools import cache

import torch
import torchvision
from torch import nn

from sparsenet.errors import ConfigError, UserInputError
from sparsenet.models import register_model
from sparsenet.pruning.channel_select import ChannelSelect
from sparsenet.pruning.prunable import check_prunable

SMALL_INPUT = 64  # px: inputs this small or smaller lose the stem's downsampling
NO_AUX_LOGITS = ("googlenet", "inception_v3")
LIST_COMMAND = (
    "python -c 'import torchvision as tv; print(tv.models.list_models(module=tv.models))'"
)


@cache
def architectures() -> tuple[str, ...]:
    """The classification architectures torchvision lists."""
    return tuple(torchvision.models.list_models(module=torchvision.models))


def check_arch(arch: object) -> str:
    """`arch` if torchvision lists it; else ConfigError('arch', ...) with the closest names."""
    names = architectures()
    if isinstance(arch, str) and arch in names:
        return arch
    close = difflib.get_close_matches(str(arch), names, n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise ConfigError(
        "arch",
        arch,
        f"is not a torchvision classification architecture{hint}",
        f"one of the {len(names)} names `{LIST_COMMAND}` prints, e.g. mobilenet_v2, resnet18",
    )


def stem(model: nn.Module) -> tuple[str, nn.Conv2d]:
    """(name, module) of the first Conv2d in module order: the layer that sees the image."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return name, module
    raise ValueError(f"{type(model).__name__} has no Conv2d")


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def _stem_pool(model: nn.Module, stem_name: str) -> str | None:
    """Name of a MaxPool2d between the stem conv and the next conv (module order), or None."""
    after_stem = False
    for name, module in model.named_modules():
        if name == stem_name:
            after_stem = True
        elif after_stem and isinstance(module, nn.Conv2d):
            return None
        elif after_stem and isinstance(module, nn.MaxPool2d):
            return name
    return None


def adapt_stem(model: nn.Module, input_shape: Sequence[int]) -> list[str]:
    """Adapt the stem to `input_shape` in place (module docstring); what was changed."""
    channels, height, width = (int(v) for v in input_shape)
    name, conv = stem(model)
    changes = []
    small = max(height, width) <= SMALL_INPUT
    downsamples = any(s > 1 for s in conv.stride)
    if channels != conv.in_channels or (small and downsamples):
        new = nn.Conv2d(
            channels,
            conv.out_channels,
            conv.kernel_size,
            stride=1 if small else conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            groups=conv.groups,
            bias=conv.bias is not None,
            padding_mode=conv.padding_mode,
        )
        if channels == conv.in_channels:
            new.load_state_dict(conv.state_dict())
        else:
            nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
            if new.bias is not None:
                nn.init.zeros_(new.bias)
            changes.append(f"{name}: {conv.in_channels} -> {channels} input channels")
        if small and downsamples:
            changes.append(f"{name}: stride {tuple(conv.stride)} -> (1, 1)")
        _set_module(model, name, new)
    pool = _stem_pool(model, name) if small and downsamples else None
    if pool is not None:
        _set_module(model, pool, nn.Identity())
        changes.append(f"{pool}: max-pool removed")
    return changes


class _ShuffleBlock(torchvision.models.shufflenetv2.InvertedResidual):
    """torchvision's ShuffleNet V2 block with its split and channel shuffle as ChannelSelect
    modules (`first`, `second`, `shuffle`), so they follow pruned channels; same function."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            out = torch.cat((self.first(x), self.branch2(self.second(x))), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return self.shuffle(out)


def route_shuffles(model: nn.Module) -> None:
    """Turn every ShuffleNet V2 block of `model` into a `_ShuffleBlock`, in place: its
    `chunk(2)` becomes two ChannelSelect spans and its `channel_shuffle(out, 2)` a ChannelSelect
    permutation (sparsenet.pruning.channel_select: torch-pruning cannot trace the shuffle)."""
    for block in model.modules():
        if type(block) is not torchvision.models.shufflenetv2.InvertedResidual:
            continue
        half = block.branch2[0].in_channels if block.stride == 1 else None
        out = 2 * block.branch2[-3].out_channels  # branch2: ..., conv, BN, ReLU
        if half is not None:
            block.first = ChannelSelect.span(0, half, 2 * half)
            block.second = ChannelSelect.span(half, 2 * half, 2 * half)
        block.shuffle = ChannelSelect.shuffle(out, 2)
        block.__class__ = _ShuffleBlock


def _trial_forward(model: nn.Module, arch: str, input_shape: Sequence[int]) -> None:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    except Exception as error:  # noqa: BLE001 - whatever the architecture refuses
        raise ConfigError(
            "arch",
            arch,
            f"cannot run on inputs of shape {list(input_shape)} "
            f"({' '.join(str(error).split())[:160]})",
            "an architecture that accepts the dataset's input size",
        ) from None
    finally:
        model.train(was_training)


@register_model("torchvision")
def torchvision_model(
    num_classes: int = 1000,
    input_shape: Sequence[int] = (3, 224, 224),
    arch: str = "mobilenet_v2",
) -> nn.Module:
    """torchvision's `arch` (random init) with its stem and classifier adapted to the data
    (module docstring); 3,504,872 params for mobilenet_v2 at 1000 classes, 3x224x224."""
    arch = check_arch(arch)
    options = {"aux_logits": False, "init_weights": True} if arch in NO_AUX_LOGITS else {}
    model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes, **options)
    adapt_stem(model, input_shape)
    route_shuffles(model)
    if any(p.is_meta for p in model.parameters()):
        return model
    _trial_forward(model, arch, input_shape)
    try:
        check_prunable(model, torch.zeros(1, *input_shape))
    except UserInputError as error:
        raise ConfigError("arch", arch, f"cannot be pruned: {error}", None) from None
    return model
