"""Structured-sparsity regularizers. Each one is a class built by Hydra from
`conf/regularizer/<name>.yaml` (`_target_`), so adding one is one file plus one YAML."""

from sparsenet.regularizers._groups import STRUCTURES, group_matrix, group_norms, group_size
from sparsenet.regularizers.base import NoRegularizer, Regularizer

__all__ = [
    "STRUCTURES",
    "NoRegularizer",
    "Regularizer",
    "group_matrix",
    "group_norms",
    "group_size",
]
