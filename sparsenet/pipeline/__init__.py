"""Pipeline stages: train (with the regularizer) -> prune (physical removal) -> fine-tune."""

from sparsenet.pipeline.run import run_experiment

__all__ = ["run_experiment"]
