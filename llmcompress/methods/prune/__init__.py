"""Unstructured pruning by magnitude (per layer, per row, global), with N:M patterns.

The calibrated criteria live beside it: :mod:`llmcompress.methods.wanda` and
:mod:`llmcompress.methods.sparsegpt`; all share :mod:`.masks` and :mod:`.config`.
"""

from .apply import PruneConfig, apply_prune
from .config import SparsityConfig

__all__ = ["PruneConfig", "SparsityConfig", "apply_prune"]
