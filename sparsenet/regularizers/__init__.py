"""Structured-sparsity regularizers. Each one is a class built by Hydra from
`conf/regularizer/<name>.yaml` (`_target_`), so adding one is one file plus one YAML.

  module                  class             config(s)
  elementwise.py          L1, L2            l1, l2
  group_lasso.py          GroupLasso        group_lasso (structures out/in/shape/layer/coupled)
  sparse_group_lasso.py   SparseGroupLasso  sparse_group_lasso (scardapane / statistics forms)
  ssl.py                  SSL               ssl
  partial.py              Partial           partial (paper A), wraps any layer-wise one
  l1_l2.py                L1L2              l1_l2 (paper C)
  variance.py             Variance          variance (paper B), sgl_variance (with Combined)
  combined.py             Combined          combined, sgl_variance: several in one run
Shared: `base.py` (interface, per-layer strengths, proximal hook), `_groups.py` (layer-wise
group structures), `_coupled.py` (graph groups from torch-pruning's DependencyGraph).
"""

from sparsenet.regularizers._groups import STRUCTURES, group_matrix, group_norms, group_size
from sparsenet.regularizers.base import NoRegularizer, Regularizer
from sparsenet.regularizers.combined import Combined
from sparsenet.regularizers.elementwise import L1, L2
from sparsenet.regularizers.group_lasso import GROUP_STRUCTURES, GroupLasso
from sparsenet.regularizers.l1_l2 import L1L2
from sparsenet.regularizers.partial import Partial
from sparsenet.regularizers.sparse_group_lasso import SparseGroupLasso
from sparsenet.regularizers.ssl import SSL
from sparsenet.regularizers.variance import Variance

__all__ = [
    "GROUP_STRUCTURES",
    "L1",
    "L1L2",
    "L2",
    "SSL",
    "STRUCTURES",
    "Combined",
    "GroupLasso",
    "NoRegularizer",
    "Partial",
    "Regularizer",
    "SparseGroupLasso",
    "Variance",
    "group_matrix",
    "group_norms",
    "group_size",
]
