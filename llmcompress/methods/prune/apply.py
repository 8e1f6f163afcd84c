"""Unstructured magnitude pruning: zero the smallest weights, per layer or globally.

Recipe::

    - method: prune
      sparsity: 0.5
      scope: layer            # layer | global | global_normalized

``layer`` removes the same fraction from every Linear (local pruning). ``global`` removes the
smallest magnitudes across all targeted layers with one exact threshold
(:mod:`.threshold`, no concatenation). Layers differ in scale, so plain global pruning can
empty small-scale layers; ``global_normalized`` ranks ``|w| / mean|w|`` of each layer instead,
one threshold over comparable scores. Weights are zeroed in place: the checkpoint is dense
with zeros and loads anywhere (no ``weight_orig`` / ``weight_mask`` leftovers).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from ...config import check_choice
from ...errors import ConfigError
from ...modeling import DEFAULT_IGNORE, linear_layers
from ...registry import MethodConfig, register_method
from .threshold import prune_in_place

logger = logging.getLogger(__name__)
SCOPES = ("layer", "global", "global_normalized")


@dataclass
class PruneConfig(MethodConfig):
    """Magnitude pruning (see module docstring)."""

    KIND: ClassVar[str] = "pruned"

    sparsity: float = field(default=0.5, metadata={"help": "fraction of the targeted weights set to zero, in [0, 1)"})
    scope: str = field(default="layer", metadata={"help": "layer | global | global_normalized"})
    targets: list[str] = field(default_factory=lambda: ["Linear"], metadata={"help": "module suffixes / re: regexes"})
    ignore: list[str] = field(default_factory=lambda: list(DEFAULT_IGNORE), metadata={"help": "modules left dense"})

    def __post_init__(self):
        if not 0 <= self.sparsity < 1:
            raise ConfigError(f"'sparsity' must be in [0, 1); got {self.sparsity}", "sparsity")
        check_choice("scope", self.scope, SCOPES)


@register_method("prune", PruneConfig)
@torch.no_grad()
def apply_prune(model, cfg: PruneConfig, ctx=None):
    """Zero the selected weights in place; returns the model."""
    targets = None if cfg.targets in (["Linear"], []) else cfg.targets
    layers = linear_layers(model, targets, cfg.ignore)
    if not layers:
        raise ConfigError(f"targets {cfg.targets} (ignore {cfg.ignore}) select no Linear layer", "targets")
    weights = [m.weight.data for m in layers.values()]
    if cfg.scope == "layer":
        pruned = [prune_in_place([w], cfg.sparsity)[0] for w in weights]
    else:
        scales = [w.abs().float().mean().clamp_min(1e-12).item() for w in weights] if cfg.scope == "global_normalized" else None
        pruned = prune_in_place(weights, cfg.sparsity, scales)
    per_layer = {name: n / w.numel() for name, w, n in zip(layers, weights, pruned)}
    if ctx is not None:
        ctx.notes["prune"] = {"per_layer_sparsity": per_layer}
    return model
