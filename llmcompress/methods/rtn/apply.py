"""Round-to-nearest (RTN) weight quantization: the calibration-free baseline.

Each group of ``group_size`` input columns gets a scale from its min/max (or from an
MSE clipping search, ``observer: mse``) and every weight is rounded to the nearest
grid point. Recipe::

    - method: rtn
      bits: 4
      group_size: 64     # SmolLM2-135M's width 576 needs 64 or 32
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ...context import Context
from ...registry import register_method
from ..quant.config import WeightQuantConfig
from ..quant.grid import fake_quantize, group_qparams
from ..quant.record import QuantRecord, set_record
from ..quant.select import plan

logger = logging.getLogger(__name__)


@dataclass
class RTNConfig(WeightQuantConfig):
    """Round-to-nearest integer weights (see module docstring)."""


@register_method("rtn", RTNConfig)
@torch.no_grad()
def apply_rtn(model, cfg: RTNConfig, ctx: Context | None = None):
    """Quantize the selected Linear weights in place; returns the model."""
    todo, skipped = plan(model, cfg)
    modules = dict(model.named_modules())
    for name, args in tqdm(todo.items(), desc="rtn", unit="layer", leave=False):
        mod = modules[name]
        w = mod.weight.data
        scale, zero = group_qparams(w, args, cfg.observer)
        # The stored scale (in the output format's dtype) is what dequantization uses.
        scale = scale.to(ctx.scale_dtype if ctx is not None and ctx.scale_dtype else w.dtype)
        mod.weight.data = fake_quantize(w, scale, zero, args, dtype=w.dtype)
        set_record(mod, QuantRecord(args, scale, zero, "rtn"))
    if ctx is not None:
        ctx.notes["rtn"] = {"quantized_layers": len(todo), "skipped_layers": skipped}
    return model
