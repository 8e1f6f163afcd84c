"""SparseGPT recipe stage: one-shot pruning with weight reconstruction (see :mod:`.sparsegpt`).

Recipe::

    - method: sparsegpt
      sparsity: 0.5          # or pattern: "2:4"
      damp: 0.01
      gptaq_alpha: 0.0       # > 0: fit the full-precision model's outputs (asymmetric calibration)
      allocation: uniform    # uniform | owl: a sparsity per decoder layer (see methods.wanda)
      first_token_weight: 512 # the first position of each calibration sequence counts 512 tokens (attention sink) at unstructured sparsity, 8 with a pattern, 1 (the paper's mean) under gptaq_alpha > 0
    calibration: {source: wiki_calib, num_samples: 128, seq_len: 512}

Calibrated layer by layer through the same engine and Hessians as GPTQ; a following
``gptq`` stage keeps the zeros.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import ClassVar

import torch

from ...config import check_range
from ...errors import ConfigError
from ...registry import register_method
from ..gptq.hessian import accumulate_hessian, accumulate_hessian_pair
from ..layerwise import LayerwiseOptions, calibrate_layerwise, check_finite
from ..prune.apply import per_layer_sparsity
from ..prune.config import CalibratedAllocation, FirstTokenWeight, SparsityConfig
from ..wanda import owl_sparsity
from .sparsegpt import sparsegpt_prune


@dataclass
class SparseGPTConfig(LayerwiseOptions, SparsityConfig, CalibratedAllocation, FirstTokenWeight):
    """SparseGPT (see module docstring)."""

    NEEDS_CALIBRATION: ClassVar[bool] = True
    # Chosen on selection text over calibration draws of SmolLM2-135M and Qwen2.5-Coder-0.5B
    # (bench:sink_select). Not applied under gptaq_alpha > 0, whose asymmetric term is unweighted.
    FIRST_TOKEN_WEIGHT: ClassVar[float] = 512.0
    # At 2:4, x8 beat the plain mean on every draw and both selection texts (SmolLM2 67.66 / 118.42
    # -> 63.94 / 103.01 over three draws; Qwen2.5-Coder-0.5B 43.45 / 23.50 -> 41.80 / 20.02 on one;
    # bench:sink_select_2of4); heavier weights lose the code text.
    FIRST_TOKEN_WEIGHT_NM: ClassVar[float] = 8.0

    damp: float = field(default=0.01, metadata={"help": "dampening, fraction of the mean Hessian diagonal"})
    block_size: int = field(default=128, metadata={"help": "columns per mask-selection block"})
    # Calibration forwards run in bf16 (the layer-wise default). They once ran in float32 here:
    # bf16-rounded Hessian products had made nearly singular Hessians indefinite (dampening raised
    # to 100%), which cost SparseGPT 2:4 on Qwen2.5-Coder-0.5B 88.97 / 47.67 perplexity against
    # 64.56 / 40.20. With float32 products bf16 forwards give 64.06 / 41.59 in 91 s, float32
    # forwards 64.00 / 38.28 in 177 s (BENCHMARKS.md, bench:prune_qwen_sparsegpt).
    gptaq_alpha: float = field(default=0.0, metadata={"help": "asymmetric calibration as in GPTAQ (Li et al., 2025): prune towards the full-precision model's outputs, not only the layer's own; 0 = plain SparseGPT (the option doubles calibration forwards and stored hidden states)"})

    def __post_init__(self):
        super().__post_init__()
        check_range("damp", self.damp, 0, 1, lo_open=True)
        check_range("block_size", self.block_size, 1)
        check_range("gptaq_alpha", self.gptaq_alpha, 0, 1)
        if self.gptaq_alpha > 0 and self.first_token_weight not in (None, 1):
            raise ConfigError("first_token_weight is not supported with gptaq_alpha > 0 (the asymmetric term is "
                              "not weighted): drop first_token_weight or set it to 1, or set gptaq_alpha to 0",
                              "first_token_weight")
        self.check_first_token_weight(1.0 if self.gptaq_alpha > 0 else None)
        self.check_allocation()
        self.check_layerwise_options()


@register_method("sparsegpt", SparseGPTConfig)
@torch.no_grad()
def apply_sparsegpt(model, cfg: SparseGPTConfig, ctx):
    layers = cfg.select(model)
    check_finite(model, layers, "SparseGPT")
    sparsity = owl_sparsity(model, layers, cfg, ctx)  # {} unless allocation: owl

    reference = cfg.gptaq_alpha > 0  # the engine also carries the full-precision model's inputs
    hessian = partial(accumulate_hessian, first_token_weight=cfg.first_token_weight)

    def update(names, modules, weights, stat, _):
        H, D = stat if reference else (stat, None)
        # Modules sharing an input are pruned as one stack (rows are independent given H),
        # with each one's mask chosen on its own rows. Sharing an input, they share a decoder
        # layer, so one OWL sparsity.
        res = sparsegpt_prune(torch.cat(weights), H, sparsity=sparsity.get(names[0], cfg.sparsity), nm=cfg.nm,
                              row_splits=[w.shape[0] for w in weights], block_size=cfg.block_size,
                              damp=cfg.damp, name=names[0], D=D, alpha=cfg.gptaq_alpha)
        row = 0
        for w in weights:
            w.copy_(res.weight[row : row + w.shape[0]])
            row += w.shape[0]
        return {"loss": res.loss, "damp": res.damp}

    stats = calibrate_layerwise(model, ctx.calibration_ids(), ctx.device, {n: None for n in layers},
                                accumulate_hessian_pair if reference else hessian, update,
                                calibration_dtype=cfg.calibration_dtype, true_sequential=cfg.true_sequential,
                                batch_size=cfg.batch_size, desc="sparsegpt", reference=reference)
    ctx.notes["prune"] = {"per_layer_sparsity": per_layer_sparsity(layers), **stats}
    return model
