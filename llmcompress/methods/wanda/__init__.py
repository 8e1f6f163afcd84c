"""Wanda: pruning by weights and activations.

Sun, Liu, Bair, Kolter. "A Simple and Effective Pruning Approach for Large Language Models",
ICLR 2024 (arXiv:2306.11695).

The score of weight ``W_ij`` is ``|W_ij| * ||X_j||_2``, the magnitude times the norm of its
input feature over the calibration tokens, so weights on rarely-large inputs go first and
weights on outlier features stay. Weights are compared within each output row (the paper's
best comparison group), or within the layer, or within N:M groups. No weight update: one
pass of statistics per layer, through the shared layer-sequential calibration engine, so
each layer is pruned on inputs that already carry the earlier layers' pruning.

Recipe::

    - method: wanda
      sparsity: 0.5          # or pattern: "2:4"
      scope: row             # row | layer
    calibration: {source: wiki_calib, num_samples: 128, seq_len: 512}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from ...config import check_choice
from ...registry import register_method
from ..layerwise import LayerwiseOptions, calibrate_layerwise, check_finite
from ..prune.apply import per_layer_sparsity
from ..prune.config import SparsityConfig
from ..prune.masks import layer_mask, nm_mask, row_mask


@dataclass
class WandaConfig(LayerwiseOptions, SparsityConfig):
    """Wanda (see module docstring)."""

    NEEDS_CALIBRATION: ClassVar[bool] = True

    scope: str = field(default="row", metadata={"help": "comparison group: row (per output) | layer"})

    def __post_init__(self):
        super().__post_init__()
        check_choice("scope", self.scope, ("row", "layer"))
        self.check_layerwise_options()


def accumulate_sq_norms(state, x: torch.Tensor, count: int):
    """Running mean over tokens of each input feature's square (``||X_j||^2 / n``)."""
    x = x.reshape(-1, x.shape[-1]).float()
    total = count + x.shape[0]
    sq = x.pow(2).sum(0)
    state = sq / total if state is None else state.mul_(count / total).add_(sq, alpha=1 / total)
    return state, total


def wanda_scores(weight: torch.Tensor, sq_norms: torch.Tensor) -> torch.Tensor:
    return weight.abs().float() * sq_norms.sqrt().unsqueeze(0)


@register_method("wanda", WandaConfig)
@torch.no_grad()
def apply_wanda(model, cfg: WandaConfig, ctx):
    layers = cfg.select(model)
    check_finite(model, layers, "Wanda")

    def update(names, modules, weights, sq_norms, _):
        for w in weights:
            score = wanda_scores(w, sq_norms)
            if cfg.nm:
                mask = nm_mask(score, *cfg.nm)
            else:
                mask = (row_mask if cfg.scope == "row" else layer_mask)(score, cfg.sparsity)
            w.masked_fill_(mask, 0)
        return None

    stats = calibrate_layerwise(model, ctx.calibration_ids(), ctx.device, {n: None for n in layers},
                                accumulate_sq_norms, update, calibration_dtype=cfg.calibration_dtype,
                                true_sequential=cfg.true_sequential, batch_size=cfg.batch_size, desc="wanda")
    ctx.notes["prune"] = {"per_layer_sparsity": per_layer_sparsity(layers), "layer_seconds": stats["layer_seconds"]}
    return model
