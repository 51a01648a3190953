"""The network as it is deployed: an inference copy with BatchNorm folded into its convolutions.

A BatchNorm2d in eval mode is an affine map per channel, y = gamma (x - mu) / sqrt(var + eps)
+ beta; when its input is a Conv2d's output and nothing else reads that output, the two are
one convolution with

    W' = W * s[:, None, None, None],   b' = (b - mu) * s + beta,   s = gamma / sqrt(var + eps)

(`torch.nn.utils.fusion.fuse_conv_bn_eval`). After pruning, a network's layers are narrower
but its BatchNorm passes stay, each a full read and write of the activation, so their share of
the time grows as the MACs fall; folding them makes latency follow the MACs. The saved run
folder (`model/`) keeps the exact trained network (BatchNorm statistics and all, which
fine-tuning and further training need); folding is for inference copies and exports
(`sparsenet.checkpoint.export_onnx`).

Which pairs fold is read from the traced graph (torch.fx): the BatchNorm's only input is the
output of an `nn.Conv2d` module call (exactly that class: a FoldedConv2d adds its border term
after the convolution), and that output has no other reader. A network torch.fx cannot trace
is returned unfolded, with a log line saying so.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from sparsenet.pruning.folded import FoldedConv2d

log = logging.getLogger(__name__)


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


class _Tracer(fx.Tracer):
    """torch.fx's tracer with a pruned network's FoldedConv2d as one opaque call (its border
    term depends on the input size, which symbolic tracing does not know)."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return isinstance(module, FoldedConv2d) or super().is_leaf_module(module, qualified_name)


def conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(conv name, BatchNorm name) of every pair that folds exactly (module docstring)."""
    graph = _Tracer().trace(model)
    modules = dict(model.named_modules())
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or type(modules[node.target]) is not nn.BatchNorm2d:
            continue
        source = node.args[0] if node.args else None
        if (
            isinstance(source, fx.Node)
            and source.op == "call_module"
            and type(modules[source.target]) is nn.Conv2d
            and len(source.users) == 1
            and len(node.args) == 1
            and not node.kwargs
        ):
            pairs.append((source.target, node.target))
    return pairs


@torch.no_grad()
def for_inference(model: nn.Module) -> nn.Module:
    """An eval-mode copy of `model` with every foldable BatchNorm2d folded into its Conv2d
    (replaced by an Identity). `model` itself is not changed."""
    deployed = copy.deepcopy(model).eval()
    try:
        pairs = conv_bn_pairs(deployed)
    except Exception as error:  # noqa: BLE001 - any tracing failure: keep the network as is
        log.info("deploy: BatchNorm not folded (torch.fx cannot trace the model: %s)", error)
        return deployed
    for conv_name, bn_name in pairs:
        conv, bn = deployed.get_submodule(conv_name), deployed.get_submodule(bn_name)
        _set_module(deployed, conv_name, fuse_conv_bn_eval(conv, bn))
        _set_module(deployed, bn_name, nn.Identity())
    return deployed
