"""Unstructured magnitude pruning: zero the smallest weights, per layer, per row or globally.

Recipe::

    - method: prune
      sparsity: 0.5
      scope: layer            # layer | row | global | global_normalized
      # pattern: "2:4"        # N:M instead of a sparsity

``layer`` removes the same fraction from every Linear (local pruning), ``row`` the same
fraction from every output row. ``global`` removes the smallest magnitudes across all
targeted layers with one exact threshold (:mod:`.threshold`, no concatenation). Layers
differ in scale, so plain global pruning can empty small-scale layers; ``global_normalized``
ranks ``|w| / mean|w|`` of each layer instead, one threshold over comparable scores.
Weights are zeroed in place: the checkpoint is dense with zeros and loads anywhere (no
``weight_orig`` / ``weight_mask`` leftovers).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from ...config import check_choice
from ...errors import ConfigError
from ...registry import register_method
from .config import SparsityConfig
from .masks import layer_mask, nm_mask, row_mask
from .threshold import prune_in_place

logger = logging.getLogger(__name__)
SCOPES = ("layer", "row", "global", "global_normalized")


@dataclass
class PruneConfig(SparsityConfig):
    """Magnitude pruning (see module docstring)."""

    scope: str = field(default="layer", metadata={"help": "layer | row | global | global_normalized (ignored with a pattern)"})

    def __post_init__(self):
        super().__post_init__()
        check_choice("scope", self.scope, SCOPES)
        if self.pattern and self.scope.startswith("global"):
            raise ConfigError(f"pattern {self.pattern} fixes the sparsity of every group of inputs; "
                              f"it cannot be combined with scope {self.scope}: use scope layer", "scope")


def per_layer_sparsity(layers: dict) -> dict[str, float]:
    return {name: float((m.weight == 0).sum()) / m.weight.numel() for name, m in layers.items()}


@register_method("prune", PruneConfig)
@torch.no_grad()
def apply_prune(model, cfg: PruneConfig, ctx=None):
    """Zero the selected weights in place; returns the model."""
    layers = cfg.select(model)
    weights = [m.weight.data for m in layers.values()]
    if cfg.nm:
        for w in weights:
            w.masked_fill_(nm_mask(w.abs(), *cfg.nm), 0)
    elif cfg.scope in ("layer", "row"):
        pick = layer_mask if cfg.scope == "layer" else row_mask
        for w in weights:
            if cfg.scope == "layer" and w.numel() > 2**24:
                prune_in_place([w], cfg.sparsity)  # chunked: no full-size score copy
            else:
                w.masked_fill_(pick(w.abs(), cfg.sparsity), 0)
    else:
        scales = ([w.abs().float().mean().clamp_min(1e-12).item() for w in weights]
                  if cfg.scope == "global_normalized" else None)
        prune_in_place(weights, cfg.sparsity, scales)
    if ctx is not None:
        ctx.notes["prune"] = {"per_layer_sparsity": per_layer_sparsity(layers)}
    return model
