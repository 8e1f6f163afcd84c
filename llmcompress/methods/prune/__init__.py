"""Pruning. Magnitude pruning (per-layer or global, exact sparsity) is here; Wanda, SparseGPT,
N:M and structured pruning come next on the same calibration engine."""

from .apply import PruneConfig, apply_prune

__all__ = ["PruneConfig", "apply_prune"]
