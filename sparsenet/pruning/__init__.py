"""Pruning: find units (neurons, filters, channels) whose coupled group went to zero and
remove them physically with torch-pruning's dependency graph."""

from sparsenet.pruning.remove import PruneResult, prune_dead_units, unit_norms

__all__ = ["PruneResult", "prune_dead_units", "unit_norms"]
