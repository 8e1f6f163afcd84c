"""Wanda: pruning by weights and activations.

Sun, Liu, Bair, Kolter. "A Simple and Effective Pruning Approach for Large Language Models",
ICLR 2024 (arXiv:2306.11695).

The score of weight ``W_ij`` is ``|W_ij| * ||X_j||_2``, the magnitude times the norm of its
input feature over the calibration tokens, so weights on rarely-large inputs go first and
weights on outlier features stay. Weights are compared within each output row (the paper's
best comparison group), or within the layer, or within N:M groups. No weight update: one
pass of statistics per layer, through the shared layer-sequential calibration engine, so
each layer is pruned on inputs that already carry the earlier layers' pruning.

``allocation: owl`` gives each decoder layer its own sparsity first (OWL, Yin et al., ICML 2024;
:mod:`llmcompress.methods.prune.owl`): one extra calibration pass scores the unpruned model with
Wanda's score and counts each layer's outliers; layers with more keep more weights, the mean
sparsity stays ``sparsity``. SparseGPT takes the same option (:func:`owl_sparsity`).

Recipe::

    - method: wanda
      sparsity: 0.5          # or pattern: "2:4"
      scope: row             # row | layer
      allocation: uniform    # uniform | owl (owl_threshold, owl_lambda)
      first_token_weight: 32 # the first position of each calibration sequence counts 32 tokens (attention sink) at unstructured sparsity, 8 with a pattern; 1 is the paper's mean
    calibration: {source: wiki_calib, num_samples: 128, seq_len: 512}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from ...config import check_choice
from ...registry import register_method
from ..gptq.hessian import first_positions
from ..layerwise import LayerwiseOptions, calibrate_layerwise, check_finite
from ..prune.apply import decoder_layer_groups, owl_allocation, per_layer_sparsity
from ..prune.config import CalibratedAllocation, FirstTokenWeight, SparsityConfig
from ..prune.masks import layer_mask, nm_mask, row_mask
from ..prune.owl import outlier_count, pooled_ratio


@dataclass
class WandaConfig(LayerwiseOptions, SparsityConfig, CalibratedAllocation, FirstTokenWeight):
    """Wanda (see module docstring)."""

    NEEDS_CALIBRATION: ClassVar[bool] = True
    # Over three calibration draws of SmolLM2-135M and Qwen2.5-Coder-0.5B, x32 gained most on
    # selection text (Qwen 39.26 / 8.22 -> 38.04 / 7.99; SmolLM2 within 0.5%; bench:sink_select).
    FIRST_TOKEN_WEIGHT: ClassVar[float] = 32.0
    # At 2:4 the two models disagree on selection text (three draws each): SmolLM2 prefers the plain
    # mean (x8 +0.9%, x32 +3.7%), Qwen2.5-Coder-0.5B a weight (x1 76.71 / 14.17, x8 75.42 / 13.91,
    # x32 73.96 / 13.81). Over both, the selection procedure picks x8 (bench:sink_select_2of4).
    FIRST_TOKEN_WEIGHT_NM: ClassVar[float] = 8.0

    scope: str = field(default="row", metadata={"help": "comparison group: row (per output) | layer"})

    def __post_init__(self):
        super().__post_init__()
        check_choice("scope", self.scope, ("row", "layer"))
        self.check_first_token_weight()
        self.check_allocation()
        self.check_layerwise_options()


def accumulate_sq_norms(state, x: torch.Tensor, count: float, first_token_weight: float = 1.0):
    """Running mean over tokens of each input feature's square (``||X_j||^2 / n``).

    With ``first_token_weight`` w, the first position of each sequence (``x[..., 0, :]`` of a
    ``[batch, seq, features]`` input) counts as w tokens. Why: models such as Qwen2.5 build a
    massive activation at the first position in their early layers, and every later position
    attends to it (the attention sink; Xiao et al., "Efficient Streaming Language Models with
    Attention Sinks", 2023; Sun et al., "Massive Activations in Large Language Models", 2024). A
    plain mean over 16k calibration tokens gives those 32 first positions almost no say, and
    pruning the early layers can then break the sink for some first tokens (BENCHMARKS.md,
    ``bench:owl_sink``).
    """
    first, extra = first_positions(x, first_token_weight)
    flat = x.reshape(-1, x.shape[-1]).float()
    sq = flat.pow(2).sum(0)
    total = count + flat.shape[0] + extra
    if extra:
        sq.add_(first.pow(2).sum(0), alpha=first_token_weight - 1.0)
    state = sq / total if state is None else state.mul_(count / total).add_(sq, alpha=1 / total)
    return state, total


def norms_of(cfg):
    """The ``accumulate`` of :func:`calibrate_layerwise` for ``cfg``'s input norms."""
    weight = getattr(cfg, "first_token_weight", 1.0)
    return lambda state, x, count: accumulate_sq_norms(state, x, count, weight)


def wanda_scores(weight: torch.Tensor, sq_norms: torch.Tensor) -> torch.Tensor:
    return weight.abs().float() * sq_norms.sqrt().unsqueeze(0)


@torch.no_grad()
def owl_sparsity(model, layers: dict, cfg, ctx) -> dict[str, float]:
    """Module name -> sparsity under ``cfg.allocation`` (an empty dict for uniform).

    OWL's layer-wise outlier distribution is measured on the unpruned model, as in the paper
    (Yin et al., 2024, Sec. 3.2): one pass of the calibration engine that only collects Wanda's
    column norms and counts, in every Linear, the scores above ``owl_threshold`` times their
    matrix's mean. The pruning pass that follows then runs on inputs that carry earlier layers'
    pruning, as without OWL.
    """
    if cfg.allocation != "owl":
        return {}
    counts: dict[str, tuple[int, int]] = {}

    def count(names, modules, weights, sq_norms, _):
        for name, w in zip(names, weights):
            counts[name] = outlier_count(wanda_scores(w, sq_norms), cfg.owl_threshold)
        return None  # weights untouched: the next layer sees the unpruned model's outputs

    # One pass per layer suffices (nothing changes between groups).
    calibrate_layerwise(model, ctx.calibration_ids(), ctx.device, {n: None for n in layers}, norms_of(cfg),
                        count, calibration_dtype=cfg.calibration_dtype, true_sequential=False,
                        batch_size=cfg.batch_size, desc="owl outliers")
    groups = decoder_layer_groups(model, layers)
    ratios = [pooled_ratio([counts[n] for n in names]) for names in groups.values()]
    ctx.notes["owl"] = {"outlier_ratio": ratios, "threshold": cfg.owl_threshold, "lambda": cfg.owl_lambda}
    return owl_allocation(groups, ratios, cfg.sparsity, cfg.owl_lambda)


@register_method("wanda", WandaConfig)
@torch.no_grad()
def apply_wanda(model, cfg: WandaConfig, ctx):
    layers = cfg.select(model)
    check_finite(model, layers, "Wanda")
    sparsity = owl_sparsity(model, layers, cfg, ctx)

    def update(names, modules, weights, sq_norms, _):
        for name, w in zip(names, weights):
            score = wanda_scores(w, sq_norms)
            if cfg.nm:
                mask = nm_mask(score, *cfg.nm)
            else:
                mask = (row_mask if cfg.scope == "row" else layer_mask)(score, sparsity.get(name, cfg.sparsity))
            w.masked_fill_(mask, 0)
        return None

    stats = calibrate_layerwise(model, ctx.calibration_ids(), ctx.device, {n: None for n in layers},
                                norms_of(cfg), update, calibration_dtype=cfg.calibration_dtype,
                                true_sequential=cfg.true_sequential, batch_size=cfg.batch_size, desc="wanda")
    ctx.notes["prune"] = {"per_layer_sparsity": per_layer_sparsity(layers), "layer_seconds": stats["layer_seconds"]}
    return model
