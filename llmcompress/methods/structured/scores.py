"""Importance of structures (MLP channels, key/value head groups, decoder layers) from
calibration activations (pure tensor functions).

Weight norms alone are a poor guide: a channel with small weights can carry large
activations. Each score is the expected size of the structure's contribution to the
residual stream over the calibration tokens, in the spirit of Wanda's ``|W| * ||X||``
lifted to whole structures (as in FLAP, An et al., 2024, and LLM-Pruner, Ma et al., 2023).
Layers are ranked by Block Influence, ``1 - cos(x_in, x_out)`` averaged over tokens
(ShortGPT, Men et al., 2024): a layer that barely turns the hidden state can go.
"""

from __future__ import annotations

import torch


def mlp_channel_scores(act_sq: torch.Tensor, w_down: torch.Tensor) -> torch.Tensor:
    """Channel ``j``: ``sqrt(E[a_j^2]) * ||W_down[:, j]||`` (``a`` = down_proj's input)."""
    return act_sq.sqrt() * w_down.float().norm(dim=0)


def kv_group_scores(act_sq: torch.Tensor, w_o: torch.Tensor, num_heads: int, num_kv: int) -> torch.Tensor:
    """One score per key/value group: the summed ``E[a_c^2] * ||W_o[:, c]||^2`` of the output-projection
    input columns ``c`` of its query heads (query heads ``g * rep .. (g + 1) * rep - 1``)."""
    per_col = act_sq * w_o.float().pow(2).sum(0)
    return per_col.view(num_kv, -1).sum(-1)  # [num_kv]: columns are grouped head-major, groups contiguous


def keep_top(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices of the ``keep`` highest scores, in increasing order (layout preserved)."""
    return torch.topk(scores, keep).indices.sort().values


def accumulate_block_influence(state, x_in: torch.Tensor, x_out: torch.Tensor):
    """Running ``(sum of 1 - cos, tokens)`` between a layer's input and output hidden states."""
    cos = torch.nn.functional.cosine_similarity(x_in.float(), x_out.float(), dim=-1)
    total, n = state if state is not None else (0.0, 0)
    return total + float((1 - cos).sum()), n + cos.numel()
