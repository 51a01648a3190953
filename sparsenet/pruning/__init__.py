"""Pruning: score the coupled unit groups of a network, choose units by a criterion
(threshold, relative, ratio), fold their contribution into the consumers and remove them
physically with torch-pruning's dependency graph.

- `groups.py`: what a unit group is and its norms (`unit_groups`, `LAYER_TYPES`), the one
  definition shared with the `coupled` regularizers.
- `criteria.py`: `PruneSettings` (the `prune` config group) and the selection rules.
- `remove.py`: folding and removal (`prune_units`, `prune_dead_units`, `unit_norms`).
- `folded.py`: `FoldedConv2d`, the exact border fold for zero-padded convs.
- `channel_select.py`: `ChannelSelect`, channel shuffles and splits the graph can follow.
- `prunable.py`: `check_prunable`, whether a network can be pruned, checked before training.
- `recalibrate.py`: `recalibrate_batchnorm`, BatchNorm statistics re-estimated after a cut.
- `budget.py`, `cost.py`: compress to a budget; the units' marginal costs.
"""

from sparsenet.pruning.channel_select import ChannelSelect
from sparsenet.pruning.criteria import PruneSettings, select_units
from sparsenet.pruning.folded import FoldedConv2d
from sparsenet.pruning.groups import (
    LAYER_TYPES,
    UnitGroup,
    UnitGroups,
    build_graph,
    customized_pruners,
    unit_groups,
)
from sparsenet.pruning.prunable import check_prunable
from sparsenet.pruning.remove import PruneResult, prune_dead_units, prune_units, unit_norms

__all__ = [
    "LAYER_TYPES",
    "ChannelSelect",
    "FoldedConv2d",
    "PruneResult",
    "PruneSettings",
    "UnitGroup",
    "UnitGroups",
    "build_graph",
    "check_prunable",
    "customized_pruners",
    "prune_dead_units",
    "prune_units",
    "select_units",
    "unit_groups",
    "unit_norms",
]
