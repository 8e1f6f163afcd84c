"""Unstructured magnitude pruning: zero the smallest weights, per layer, per row or globally.

Recipe::

    - method: prune
      sparsity: 0.5
      scope: layer            # layer | row | global | global_normalized | owl
      # pattern: "2:4"        # N:M instead of a sparsity

``layer`` removes the same fraction from every Linear (local pruning), ``row`` the same
fraction from every output row. ``global`` removes the smallest magnitudes across all
targeted layers with one exact threshold (:mod:`.threshold`, no concatenation). Layers
differ in scale, so plain global pruning can empty small-scale layers; ``global_normalized``
ranks ``|w| / mean|w|`` of each layer instead, one threshold over comparable scores.
``owl`` gives each decoder layer its own sparsity from its share of outlier weights (OWL,
:mod:`.owl`: more outliers, fewer zeros; mean sparsity unchanged), then prunes each matrix
of the layer to that sparsity.
Weights are zeroed in place (on CPU the global scopes write fresh tensors instead, see
:func:`.threshold.prune_replacing`): the checkpoint is dense with zeros and loads anywhere (no
``weight_orig`` / ``weight_mask`` leftovers).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from ...config import check_choice
from ...errors import ConfigError
from ...modeling import decoder_layer_prefix
from ...registry import register_method
from .config import OWLOptions, SparsityConfig
from .masks import layer_mask, nm_mask, row_mask
from .owl import outlier_ratio, owl_sparsities
from .threshold import prune_in_place, prune_replacing

logger = logging.getLogger(__name__)
SCOPES = ("layer", "row", "global", "global_normalized", "owl")


@dataclass
class PruneConfig(SparsityConfig, OWLOptions):
    """Magnitude pruning (see module docstring)."""

    scope: str = field(default="layer", metadata={"help": "layer | row | global | global_normalized | owl"})

    def __post_init__(self):
        super().__post_init__()
        check_choice("scope", self.scope, SCOPES)
        if self.scope == "owl":
            self.check_owl(self.sparsity, self.pattern, "scope", "owl")
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
            if cfg.scope == "layer":
                _prune_layer(w, cfg.sparsity)
            else:
                w.masked_fill_(pick(w.abs(), cfg.sparsity), 0)
    elif cfg.scope == "owl":
        allocation = _owl(model, layers, cfg)
        for name, module in layers.items():
            _prune_layer(module.weight.data, allocation.get(name, cfg.sparsity))
    else:
        scales = ([w.abs().float().mean().clamp_min(1e-12).item() for w in weights]
                  if cfg.scope == "global_normalized" else None)
        if all(w.device.type == "cpu" for w in weights):
            # fresh tensors: in-place writes into memory-mapped checkpoints copy every page
            modules = list(layers.values())

            def replace(i, new):
                modules[i].weight.data = new

            prune_replacing(weights, cfg.sparsity, scales, replace)
        else:
            prune_in_place(weights, cfg.sparsity, scales)
    if ctx is not None:
        ctx.notes["prune"] = {"per_layer_sparsity": per_layer_sparsity(layers)}
    return model


def _prune_layer(w: torch.Tensor, sparsity: float) -> None:
    if w.numel() > 2**24:
        prune_in_place([w], sparsity)  # chunked: no full-size score copy
    else:
        w.masked_fill_(layer_mask(w.abs(), sparsity), 0)


def decoder_layer_groups(model, names) -> dict[int, list[str]]:
    """Decoder layer index -> the given module names inside it (names outside every decoder layer are left out)."""
    prefix = decoder_layer_prefix(model) + "."
    groups: dict[int, list[str]] = {}
    for name in names:
        if name.startswith(prefix):
            groups.setdefault(int(name[len(prefix) :].split(".")[0]), []).append(name)
    return dict(sorted(groups.items()))


def owl_allocation(groups: dict[int, list[str]], ratios: list[float], sparsity: float, lam: float) -> dict[str, float]:
    """Module name -> sparsity, from each decoder layer's outlier ratio (``ratios`` in ``groups``' order)."""
    sparsities = owl_sparsities(ratios, sparsity, lam)
    logger.info("OWL layer sparsities: %s", ", ".join(f"{s:.3f}" for s in sparsities))
    return {n: s for names, s in zip(groups.values(), sparsities) for n in names}


def _owl(model, layers: dict, cfg: PruneConfig) -> dict[str, float]:
    """Sparsity of every selected Linear from its decoder layer's share of outlier magnitudes (OWL)."""
    groups = decoder_layer_groups(model, layers)
    ratios = [outlier_ratio([layers[n].weight for n in names], cfg.owl_threshold) for names in groups.values()]
    return owl_allocation(groups, ratios, cfg.sparsity, cfg.owl_lambda)
