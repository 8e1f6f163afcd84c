"""Remove structures for real: smaller Linear layers and a config that describes them, so that
plain ``from_pretrained`` builds the smaller model. transformers configs hold one width per
model, so every layer is cut to the same shape."""

from __future__ import annotations

import torch
from torch import nn


def sliced_linear(linear: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> nn.Linear:
    """A new Linear with the given output rows / input columns of ``linear`` (bias follows rows)."""
    w = linear.weight.data
    if rows is not None:
        w = w.index_select(0, rows.to(w.device))
    if cols is not None:
        w = w.index_select(1, cols.to(w.device))
    new = nn.Linear(w.shape[1], w.shape[0], bias=linear.bias is not None, device=w.device, dtype=w.dtype)
    new.weight.data.copy_(w)
    if linear.bias is not None:
        b = linear.bias.data
        new.bias.data.copy_(b.index_select(0, rows.to(b.device)) if rows is not None else b)
    return new


def prune_mlp_channels(mlp: nn.Module, keep: torch.Tensor) -> None:
    """Keep intermediate channels ``keep`` of a gated MLP (gate/up rows, down columns)."""
    mlp.gate_proj = sliced_linear(mlp.gate_proj, rows=keep)
    mlp.up_proj = sliced_linear(mlp.up_proj, rows=keep)
    mlp.down_proj = sliced_linear(mlp.down_proj, cols=keep)
    if hasattr(mlp, "intermediate_size"):
        mlp.intermediate_size = len(keep)


def prune_kv_groups(attn: nn.Module, keep_groups: torch.Tensor, num_heads: int, num_kv: int, head_dim: int) -> None:
    """Keep key/value heads ``keep_groups`` and the query heads that read them."""
    rep = num_heads // num_kv
    kv_rows = (keep_groups[:, None] * head_dim + torch.arange(head_dim)).reshape(-1)
    q_heads = (keep_groups[:, None] * rep + torch.arange(rep)).reshape(-1)
    q_rows = (q_heads[:, None] * head_dim + torch.arange(head_dim)).reshape(-1)
    attn.q_proj = sliced_linear(attn.q_proj, rows=q_rows)
    attn.k_proj = sliced_linear(attn.k_proj, rows=kv_rows)
    attn.v_proj = sliced_linear(attn.v_proj, rows=kv_rows)
    attn.o_proj = sliced_linear(attn.o_proj, cols=q_rows)


def drop_layers(model: nn.Module, drop: list[int]) -> None:
    """Remove decoder layers ``drop``; renumber the rest (KV caches index layers by position)."""
    layers = model.model.layers
    kept = [layer for i, layer in enumerate(layers) if i not in set(drop)]
    for i, layer in enumerate(kept):
        for m in layer.modules():
            if hasattr(m, "layer_idx"):
                m.layer_idx = i
    model.model.layers = nn.ModuleList(kept)
    cfg = model.config
    if isinstance(getattr(cfg, "layer_types", None), list):
        cfg.layer_types = [t for i, t in enumerate(cfg.layer_types) if i not in set(drop)]
    cfg.num_hidden_layers = len(kept)
