"""Outlier-weighted layer-wise sparsity (OWL): a non-uniform sparsity per decoder layer.

Yin et al., "Outlier Weighed Layerwise Sparsity (OWL): A Missing Secret Sauce for Pruning
LLMs to High Sparsity", ICML 2024 (arXiv:2310.05175). Layers holding more outliers matter
more, so they are pruned less: with ``D_l`` the fraction of a decoder layer's weights whose
score exceeds ``M`` times the mean score of their matrix (the layer-wise outlier
distribution, LOD), the layer keeps a density rescaled linearly into ``[1 - S - lambda,
1 - S + lambda]`` by ``D_l`` and shifted so that the mean over layers is exactly ``1 - S``.

The paper scores weights with Wanda's ``|W| * ||X||`` on the unpruned model's activations;
Wanda and SparseGPT do the same here (``allocation: owl``, one extra calibration pass), and
magnitude pruning (``scope: owl``), which has no activations, scores ``|W|``. Pure tensor code.
"""

from __future__ import annotations

from typing import Sequence

import torch


def outlier_count(score: torch.Tensor, m: float) -> tuple[int, int]:
    """(outliers, entries) of one matrix: entries whose magnitude exceeds ``m`` times the mean magnitude."""
    a = score.detach().abs().float()
    return int((a > m * a.mean()).sum()), a.numel()


def pooled_ratio(counts: Sequence[tuple[int, int]]) -> float:
    """Outliers over entries of several matrices together (a decoder layer's outlier ratio)."""
    return sum(c for c, _ in counts) / max(sum(n for _, n in counts), 1)


def outlier_ratio(weights: Sequence[torch.Tensor], m: float) -> float:
    """Fraction of the entries (weights or scores) above ``m`` times their own matrix's mean magnitude."""
    return pooled_ratio([outlier_count(w, m) for w in weights])


def owl_sparsities(ratios: Sequence[float], sparsity: float, lam: float) -> list[float]:
    """Per-layer sparsities from outlier ratios: mean ``sparsity``, spread ``[-lam, +lam]``,
    fewer zeros where there are more outliers. Equal ratios give uniform sparsity."""
    d = torch.tensor(list(ratios), dtype=torch.float64)
    span = float(d.max() - d.min()) if d.numel() else 0.0
    if span == 0.0:
        return [sparsity] * len(ratios)
    density = (d - d.min()) / span * (2 * lam)
    density = density - density.mean() + (1 - sparsity)
    return [float(1 - x) for x in density]
