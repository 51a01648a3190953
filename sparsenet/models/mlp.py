"""Fully connected networks (multilayer perceptrons) on flattened inputs.

- `mlp`: paper A's 784-400-300-100-10 ReLU network (E & Gao, arXiv 1912.05078), 465,410
  parameters on MNIST; the hidden sizes are configurable.
- `lenet300_100`: LeNet-300-100 (LeCun et al. 1998; SSL's and Han et al.'s MNIST MLP),
  784-300-100-10 ReLU, 266,610 parameters.

Layers are named `fc1, relu1, ..., fcK` so regularizer layer patterns (`{"fc4": null}`) read
the same as in the papers.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

from sparsenet.config.checks import Choice, Sizes
from sparsenet.models import register_model

INITS = ("default", "paper_a")


def init_paper_a(model: nn.Module, std: float = 0.1, bias: float = 0.1) -> None:
    """Paper A's init: weights ~ truncated normal (std 0.1, cut at 2 std, as TF's
    `truncated_normal`), every bias 0.1. Applies to every Linear layer, the output one too."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, mean=0.0, std=std, a=-2 * std, b=2 * std)
            if module.bias is not None:
                nn.init.constant_(module.bias, bias)


def build_mlp(
    in_features: int, hidden: Sequence[int], num_classes: int, init: str = "default"
) -> nn.Sequential:
    """Flatten -> [Linear -> ReLU] per hidden size -> Linear(num_classes)."""
    Choice(INITS)("init", init)
    sizes = [in_features, *Sizes()("hidden", hidden)]
    layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True), start=1):
        layers[f"fc{i}"] = nn.Linear(n_in, n_out)
        layers[f"relu{i}"] = nn.ReLU()
    layers[f"fc{len(sizes)}"] = nn.Linear(sizes[-1], num_classes)
    model = nn.Sequential(layers)
    if init == "paper_a":
        init_paper_a(model)
    return model


@register_model("mlp")
def mlp(
    num_classes: int = 10,
    input_shape: Sequence[int] = (1, 28, 28),
    hidden: Sequence[int] = (400, 300, 100),
    init: str = "default",
) -> nn.Module:
    """Paper A's MLP: 784-400-300-100-10, ReLU; 465,410 params on MNIST.

    `init="default"` keeps PyTorch's Linear init; `"paper_a"` is the authors' truncated normal
    (std 0.1) weights with biases 0.1.
    """
    return build_mlp(math.prod(input_shape), list(hidden), num_classes, init)


@register_model("lenet300_100")
def lenet300_100(
    num_classes: int = 10, input_shape: Sequence[int] = (1, 28, 28), init: str = "default"
) -> nn.Module:
    """LeNet-300-100 (LeCun et al. 1998): 784-300-100-10, ReLU; 266,610 params on MNIST."""
    return build_mlp(math.prod(input_shape), [300, 100], num_classes, init)
