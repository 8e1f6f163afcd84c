"""Outlier-weighted layer-wise sparsity (OWL): a non-uniform sparsity per decoder layer.

Yin et al., "Outlier Weighed Layerwise Sparsity (OWL): A Missing Secret Sauce for Pruning
LLMs to High Sparsity", ICML 2024 (arXiv:2310.05175). Layers holding more outliers matter
more, so they are pruned less: with ``D_l`` the fraction of a decoder layer's weights whose
score exceeds ``M`` times the mean score of their matrix (the layer-wise outlier
distribution, LOD), the layer keeps a density rescaled linearly into ``[1 - S - lambda,
1 - S + lambda]`` by ``D_l`` and shifted so that the mean over layers is exactly ``1 - S``.

The paper scores weights with Wanda's ``|W| * ||X||``; this implementation serves
magnitude pruning, which has no activations, so the score is ``|W|``. Pure tensor code.
"""

from __future__ import annotations

from typing import Sequence

import torch


def outlier_ratio(weights: Sequence[torch.Tensor], m: float) -> float:
    """Fraction of the weights whose magnitude exceeds ``m`` times their matrix's mean magnitude."""
    outliers = total = 0
    for w in weights:
        a = w.detach().abs().float()
        outliers += int((a > m * a.mean()).sum())
        total += a.numel()
    return outliers / max(total, 1)


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
