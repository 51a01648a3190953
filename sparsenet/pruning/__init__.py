"""Pruning: score the coupled unit groups of a network, choose units by a criterion
(threshold, relative, ratio), fold their contribution into the consumers and remove them
physically with torch-pruning's dependency graph.

- `criteria.py`: `PruneSettings` (the `prune` config group) and the selection rules.
- `remove.py`: groups, norms, folding and removal (`prune_units`, `prune_dead_units`).
- `folded.py`: `FoldedConv2d`, the exact border fold for zero-padded convs.
"""

from sparsenet.pruning.criteria import PruneSettings, select_units
from sparsenet.pruning.folded import FoldedConv2d, customized_pruners
from sparsenet.pruning.remove import (
    PruneResult,
    build_graph,
    prune_dead_units,
    prune_units,
    unit_norms,
)

__all__ = [
    "FoldedConv2d",
    "PruneResult",
    "PruneSettings",
    "build_graph",
    "customized_pruners",
    "prune_dead_units",
    "prune_units",
    "select_units",
    "unit_norms",
]
