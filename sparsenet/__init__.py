"""sparsenet: structured-sparsity regularization, physical pruning and fine-tuning as
config-driven experiments."""

__version__ = "0.1.0"
