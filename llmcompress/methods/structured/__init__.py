"""Structured pruning: remove MLP channels, key/value head groups and whole decoder layers.

Recipe::

    - method: prune_structured
      mlp_ratio: 0.25        # fraction of MLP intermediate channels removed (same count per layer)
      head_ratio: 0.0        # fraction of key/value groups removed, each with its query heads
      drop_layers: 0         # decoder layers removed, lowest Block Influence first
      # layers: [20, 21]     # or exactly these decoder layers
    calibration: {source: wiki_calib, num_samples: 64, seq_len: 512}

Importance comes from calibration activations (:mod:`.scores`), collected layer by layer
through the shared calibration engine, so each layer is scored on inputs that already went
through the pruned layers before it. The parameters are removed for real and the config is
rewritten (:mod:`.rewrite`): the output loads as a smaller model with plain
``from_pretrained``. ``head_dim`` is kept (written explicitly into the config).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from ...calibration import CALIBRATION_DTYPE_HELP, CALIBRATION_DTYPES, resolve_calibration_dtype, run_layerwise
from ...config import check_choice, check_range
from ...errors import ConfigError
from ...registry import MethodConfig, register_method
from ..wanda import accumulate_sq_norms
from .rewrite import drop_layers, prune_kv_groups, prune_mlp_channels
from .scores import accumulate_block_influence, keep_top, kv_group_scores, mlp_channel_scores

logger = logging.getLogger(__name__)


@dataclass
class StructuredPruneConfig(MethodConfig):
    """Structured pruning (see module docstring)."""

    KIND: ClassVar[str] = "pruned"
    NEEDS_CALIBRATION: ClassVar[bool] = True

    mlp_ratio: float = field(default=0.0, metadata={"help": "fraction of MLP intermediate channels removed, in [0, 1)"})
    head_ratio: float = field(default=0.0, metadata={"help": "fraction of key/value groups removed (with their query heads), in [0, 1)"})
    drop_layers: int = field(default=0, metadata={"help": "number of decoder layers removed, lowest Block Influence first"})
    layers: list[int] = field(default_factory=list, metadata={"help": "exactly these decoder layers removed (instead of drop_layers)"})
    batch_size: int = field(default=8, metadata={"help": "calibration samples per layer forward"})
    calibration_dtype: str = field(default="fast", metadata={"help": CALIBRATION_DTYPE_HELP})

    def __post_init__(self):
        check_range("mlp_ratio", self.mlp_ratio, 0, 1, hi_open=True)
        check_range("head_ratio", self.head_ratio, 0, 1, hi_open=True)
        check_range("drop_layers", self.drop_layers, 0)
        check_range("batch_size", self.batch_size, 1)
        check_choice("calibration_dtype", self.calibration_dtype, CALIBRATION_DTYPES)
        if self.layers and self.drop_layers:
            raise ConfigError("give either 'layers' (which to remove) or 'drop_layers' (how many), not both", "layers")
        if not (self.mlp_ratio or self.head_ratio or self.drop_layers or self.layers):
            raise ConfigError("prune_structured removes nothing: set mlp_ratio, head_ratio, drop_layers or layers",
                              "mlp_ratio")

    def plan(self, config) -> dict:
        """What will be removed from a model with this transformers ``config``; raises ConfigError
        for ratios that would leave nothing or split a key/value group. Needs no weights."""
        inter = config.intermediate_size
        heads, kv = config.num_attention_heads, getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        n_layers = config.num_hidden_layers
        mlp_keep = inter - round(self.mlp_ratio * inter)
        if mlp_keep < 1:
            raise ConfigError(f"mlp_ratio {self.mlp_ratio} would leave no MLP channel of {inter}", "mlp_ratio")
        groups = self.head_ratio * kv
        if abs(groups - round(groups)) > 1e-6:
            raise ConfigError(
                f"head_ratio {self.head_ratio} of {kv} key/value groups is {groups:g} groups: heads are removed "
                f"by whole key/value groups (each with its {heads // kv} query heads) so that grouped-query "
                f"attention stays valid; use a multiple of 1/{kv}", "head_ratio")
        kv_keep = kv - round(groups)
        if kv_keep < 1:
            raise ConfigError(f"head_ratio {self.head_ratio} would leave no attention head", "head_ratio")
        bad = [i for i in self.layers if not 0 <= i < n_layers]
        if bad:
            raise ConfigError(f"layers {bad} do not exist: the model has decoder layers 0..{n_layers - 1}", "layers")
        n_drop = len(set(self.layers)) or self.drop_layers
        if n_drop >= n_layers:
            raise ConfigError(f"removing {n_drop} of {n_layers} decoder layers would leave none", "drop_layers")
        return {"mlp_keep": mlp_keep, "kv_keep": kv_keep, "n_drop": n_drop}

    def check_model(self, config, source=None) -> None:
        self.plan(config)


def _cast(layer: nn.Module, dtype):
    """Cast the layer's parameters for forwards; returns a function that restores the originals."""
    if dtype is None:
        return lambda: None
    saved = [(p, p.data) for p in layer.parameters()]
    for p, d in saved:
        p.data = d.to(dtype)
    return lambda: [setattr(p, "data", d) for p, d in saved]


@register_method("prune_structured", StructuredPruneConfig)
@torch.no_grad()
def apply_structured(model: nn.Module, cfg: StructuredPruneConfig, ctx):
    config = model.config
    plan = cfg.plan(config)
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    dtype = resolve_calibration_dtype(cfg.calibration_dtype, ctx.device)
    influence: list[float] = []
    cut_mlp = plan["mlp_keep"] < config.intermediate_size
    cut_heads = plan["kv_keep"] < kv
    rank_layers = bool(cfg.drop_layers)

    def process(index, prefix, layer, runner):
        observed = {}
        if cut_mlp:
            observed["mlp.down_proj"] = layer.mlp.down_proj
        if cut_heads:
            observed["self_attn.o_proj"] = layer.self_attn.o_proj
        restore = _cast(layer, dtype)
        if observed:
            sq: dict = {}

            def add(name, x):
                state, count = sq.get(name, (None, 0))
                sq[name] = accumulate_sq_norms(state, x, count)

            runner.observe(observed, add)
        restore()
        if cut_mlp:
            scores = mlp_channel_scores(sq["mlp.down_proj"][0], layer.mlp.down_proj.weight)
            prune_mlp_channels(layer.mlp, keep_top(scores, plan["mlp_keep"]))
        if cut_heads:
            scores = kv_group_scores(sq["self_attn.o_proj"][0], layer.self_attn.o_proj.weight, heads, kv)
            prune_kv_groups(layer.self_attn, keep_top(scores, plan["kv_keep"]), heads, kv, head_dim)
        restore = _cast(layer, dtype)
        if not rank_layers:
            return restore
        x_in = runner.hidden.clone()

        def finish():
            restore()
            state = None
            for i in range(0, len(x_in), runner.batch_size):
                state = accumulate_block_influence(state, x_in[i : i + runner.batch_size],
                                                   runner.hidden[i : i + runner.batch_size])
            influence.append(state[0] / state[1])

        return finish

    notes: dict = {"before": {"intermediate_size": config.intermediate_size, "num_key_value_heads": kv,
                              "num_attention_heads": heads, "num_hidden_layers": config.num_hidden_layers}}
    if cut_mlp or cut_heads or rank_layers:
        notes["layer_seconds"] = run_layerwise(model, ctx.calibration_ids(), process, ctx.device,
                                               batch_size=cfg.batch_size, desc="prune_structured", dtype=dtype)
    if cut_mlp:
        config.intermediate_size = plan["mlp_keep"]
    if cut_heads:
        config.head_dim = head_dim  # keep it: the default hidden/heads would change with fewer heads
        config.num_attention_heads = plan["kv_keep"] * (heads // kv)
        config.num_key_value_heads = plan["kv_keep"]
    drop = sorted(set(cfg.layers)) or sorted(sorted(range(len(influence)), key=influence.__getitem__)[: cfg.drop_layers])
    if influence:
        notes["block_influence"] = [round(v, 5) for v in influence]
    if drop:
        drop_layers(model, drop)
        notes["dropped_layers"] = drop
    notes["after"] = {"intermediate_size": config.intermediate_size, "num_key_value_heads": config.num_key_value_heads,
                      "num_attention_heads": config.num_attention_heads, "num_hidden_layers": config.num_hidden_layers}
    ctx.notes["prune_structured"] = notes
    logger.info("structured pruning: %s -> %s", notes["before"], notes["after"])
    return model
