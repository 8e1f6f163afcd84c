"""Which Linear layers a quantization config touches, and which it must skip."""

from __future__ import annotations

import logging

from torch import nn

from ...errors import ConfigError
from ...modeling import linear_layers
from .config import WeightQuantConfig
from .grid import QuantArgs

logger = logging.getLogger(__name__)


def plan(model: nn.Module, cfg: WeightQuantConfig) -> tuple[dict[str, QuantArgs], list[str]]:
    """``(name -> args for the layers to quantize, names skipped because widths do not fit)``.

    Raises:
        ConfigError: nothing selected; or, in strict mode, a width the group size does not divide;
            or a group size that divides no selected layer at all.
    """
    selected = linear_layers(model, cfg.module_targets, cfg.ignore)
    if not selected:
        raise ConfigError(f"targets {cfg.targets} (ignore {cfg.ignore}) select no Linear layer", "targets")
    todo, skipped = {}, []
    for name, mod in selected.items():
        args = cfg.args_for(name)
        if args.fits(mod.in_features):
            todo[name] = args
        elif cfg.strict:
            raise ConfigError(
                f"layer '{name}' has {mod.in_features} input features, not divisible by group_size "
                f"{args.group_size}; pick a group size that divides it (e.g. 64 or 32) or set strict: false",
                "group_size")
        else:
            skipped.append(name)
    if not todo:
        widths = sorted({m.in_features for m in selected.values()})
        raise ConfigError(
            f"group_size {cfg.group_size} divides none of the layer widths {widths}; "
            f"use a group size that divides them (e.g. 64, 32) or -1 (per channel)", "group_size")
    if skipped:
        logger.warning("%d layers left unquantized (group size does not divide their width): %s",
                       len(skipped), ", ".join(skipped[:6]) + (" ..." if len(skipped) > 6 else ""))
    return todo, skipped
