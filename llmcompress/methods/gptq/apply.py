"""GPTQ applied to a model through the shared layer-by-layer calibration driver."""

from __future__ import annotations

import torch
from torch import nn

from ...context import Context
from ...registry import register_method
from ..layerwise import calibrate_layerwise, check_finite
from ..quant.record import QuantRecord, set_record
from ..quant.select import plan
from .config import GPTQConfig
from .gptq import gptq_quantize
from .hessian import accumulate_gptaq, accumulate_hessian


@register_method("gptq", GPTQConfig)
def apply_gptq(model: nn.Module, cfg: GPTQConfig, ctx: Context):
    """Quantize the selected Linear layers with GPTQ, in place; returns the model."""
    todo, skipped = plan(model, cfg)
    check_finite(model, todo, "GPTQ")

    reference = cfg.gptaq_alpha > 0  # GPTAQ: the engine also carries the full-precision model's inputs

    def update(names, modules, weights, stat, args):
        H, D, WD = stat if reference else (stat, None, None)
        # Rows are independent given H: modules sharing an input are quantized as one stack.
        res = gptq_quantize(torch.cat(weights), H, args, block_size=cfg.block_size, damp=cfg.damp,
                            act_order=cfg.act_order, observer=cfg.observer, dtype=weights[0].dtype,
                            scale_dtype=ctx.scale_dtype, name=names[0], D=D, WD=WD, alpha=cfg.gptaq_alpha,
                            target_damp=cfg.gptaq_damp, refit=cfg.refit, refit_damp=cfg.refit_damp)
        row = 0
        for module, w in zip(modules, weights):
            r = w.shape[0]
            w.copy_(res.weight[row : row + r])
            zero = res.zero[row : row + r].clone() if res.zero is not None else None
            set_record(module, QuantRecord(args, res.scale[row : row + r].clone(), zero, "gptq"))
            row += r
        return {"loss": res.loss, "damp": res.damp}

    stats = calibrate_layerwise(model, ctx.calibration_ids(), ctx.device, todo,
                                accumulate_gptaq if reference else accumulate_hessian, update,
                                calibration_dtype=cfg.calibration_dtype, true_sequential=cfg.true_sequential,
                                batch_size=cfg.batch_size, desc="gptq", stream=ctx.layer_stream, reference=reference)
    stats["skipped_layers"] = skipped
    ctx.notes["gptq"] = stats
    return model
