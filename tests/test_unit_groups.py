"""The groups regularized are the groups removed, on every registry model: the `coupled`
group lasso's per-group norms are the pruner's per-unit norms, and zeroing a chosen set of
units as the regularizer defines them (its own `scale_`, what its proximal step does to a
group) makes the pruner remove exactly those units, every slice of them and nothing else,
with the pruned network computing what the masked dense one computed."""

import pytest
import torch
from torch import nn

from sparsenet.models import get_model, list_models
from sparsenet.pruning import prune_dead_units, unit_norms
from sparsenet.regularizers import GroupLasso

INPUT_SHAPES = {"resnet18": (3, 32, 32), "resnet50": (3, 32, 32)}  # small ImageNet inputs
CHOSEN_PER_GROUP = 2


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _input_shape(name: str) -> tuple[int, int, int]:
    if name in INPUT_SHAPES:
        return INPUT_SHAPES[name]
    return (3, 32, 32) if name.startswith(("vgg", "resnet")) else (1, 28, 28)


def _model(name: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    shape = _input_shape(name)
    model = get_model(name, num_classes=10, input_shape=shape).eval()
    x = torch.randn(4, *shape)
    with torch.no_grad():  # non-zero shifts: a zeroed channel still emits a constant
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.bias.uniform_(-0.1, 0.3)
        # Logits of order 1 (deep random ResNets reach ~1e3), so atol is a relative precision.
        head = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))][-1]
        scale = float(model(x).abs().max())
        head.weight /= scale
        head.bias /= scale
    return model, x


def _widths(model: nn.Module) -> dict[tuple[str, str], int]:
    """(layer, 'out' | 'in') -> its number of rows / weight columns; (BatchNorm, 'bn') -> its
    number of features."""
    widths = {}
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            widths[name, "out"], widths[name, "in"] = m.weight.shape[0], m.weight.shape[1]
        elif isinstance(m, nn.BatchNorm2d):
            widths[name, "bn"] = m.num_features
    return widths


@pytest.mark.parametrize("name", list_models())
def test_regularized_groups_are_removed_groups(name):
    model, x = _model(name)
    reg = GroupLasso(1.0, "coupled", sqrt_weighting=False)
    reg.bind(model, x[:1])
    groups = reg._coupled

    # The regularizer's groups are the pruner's units, with the same norms:
    # ||w_u||^2 = in_norm(u)^2 + out_norm(u)^2 (no BatchNorm, no fold kernel here).
    pruner_norms = unit_norms(model, x[:1])
    assert [root for root, _, _ in groups.roots] == list(pruner_norms)
    norms = groups.norms().detach()
    assert bool((norms > 0).all())
    for root, first, n in groups.roots:
        in_norm, out_norm = pruner_norms[root]
        torch.testing.assert_close(norms[first : first + n] ** 2, in_norm**2 + out_norm**2)

    # Zero a few units of every group as the regularizer defines them.
    chosen = {
        root: sorted(torch.randperm(n)[: min(CHOSEN_PER_GROUP, n - 1)].tolist())
        for root, _, n in groups.roots
    }
    factors = torch.ones(groups.num_groups)
    for root, first, _ in groups.roots:
        factors[[first + u for u in chosen[root]]] = 0
    groups.scale_(factors)
    # Exactly the chosen groups are now zero (groups of neighbouring layers share weights,
    # W_q[v, idx(u)], so the others shrink, but none of them is emptied).
    assert torch.equal(groups.norms().detach() == 0, factors == 0)
    expected = _widths(model)
    for group in groups.groups:
        dead = torch.zeros(group.size, dtype=torch.bool)
        dead[chosen[group.name]] = True
        for s in group.slices:
            expected[s.name, s.kind] -= int(dead[s.unit].sum())
    with torch.no_grad():
        reference = model(x)

    result = prune_dead_units(model, x[:1], threshold=0.0, calibration=x)

    assert result.removed == {root: units for root, units in chosen.items() if units}
    assert result.units_total == groups.num_groups
    assert _widths(model) == expected
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference, atol=1e-5, rtol=0)
