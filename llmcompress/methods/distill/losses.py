"""Distillation losses on next-token distributions (pure tensor functions).

- forward KL, ``T^2 * KL(p_t || p_s)`` with temperature ``T`` (Hinton, Vinyals, Dean, 2015): the
  student covers every mode of the teacher;
- reverse KL, ``T^2 * KL(p_s || p_t)`` (MiniLLM, Gu et al., 2024): mode-seeking;
- generalized JSD with ``beta`` (GKD, Agarwal et al., 2024): ``beta * KL(p_t || m) + (1 - beta) *
  KL(p_s || m)``, ``m = beta * p_t + (1 - beta) * p_s``; forward KL as beta -> 0 up to scale,
  reverse KL as beta -> 1.

Memory: the loss walks the tokens in chunks, and each chunk runs under activation
checkpointing, so the float32 softmaxes of both models exist for one chunk at a time, in the
forward and in the backward pass, never as full ``[batch, seq, vocab]`` tensors.

A teacher given as top-k (values, indices) from the logit cache is a distribution over those k
tokens (softmax of the k logits). Forward KL then compares it with the student's full-vocabulary
log-probabilities at those tokens; reverse KL and JSD, which need the teacher's probability of
every token the student puts mass on, compare both distributions renormalized over the k tokens.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

LOSSES = ("forward_kl", "reverse_kl", "jsd")


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row from log-probabilities (finite: log_softmax of finite logits never gives -inf)."""
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def token_divergence(s_logits: torch.Tensor, t_logits: torch.Tensor, kind: str, temperature: float = 1.0,
                     beta: float = 0.5, t_indices: torch.Tensor | None = None) -> torch.Tensor:
    """Per-token divergence ``[n]`` between student logits ``[n, V]`` and teacher logits ``[n, V]``
    (or the teacher's top-k logits ``[n, k]`` at ``t_indices``), times ``T^2``."""
    s = s_logits.float() / temperature
    t = t_logits.float() / temperature
    log_t = F.log_softmax(t, -1)
    if t_indices is None:
        log_s = F.log_softmax(s, -1)
    elif kind == "forward_kl":
        log_s = F.log_softmax(s, -1).gather(-1, t_indices.long())
    else:
        log_s = F.log_softmax(s.gather(-1, t_indices.long()), -1)
    if kind == "forward_kl":
        d = _kl(log_t, log_s)
    elif kind == "reverse_kl":
        d = _kl(log_s, log_t)
    elif kind == "jsd":
        if beta <= 0:
            d = _kl(log_t, log_s)
        elif beta >= 1:
            d = _kl(log_s, log_t)
        else:
            log_m = torch.logaddexp(log_t + math.log(beta), log_s + math.log(1 - beta))
            d = beta * _kl(log_t, log_m) + (1 - beta) * _kl(log_s, log_m)
    else:
        raise ValueError(f"unknown loss {kind!r}; one of {LOSSES}")
    return d * temperature**2


def distill_loss(s_logits: torch.Tensor, t_logits: torch.Tensor, mask: torch.Tensor | None = None, *,
                 kind: str = "forward_kl", temperature: float = 1.0, beta: float = 0.5,
                 t_indices: torch.Tensor | None = None, chunk_size: int = 1024) -> torch.Tensor:
    """Mean divergence over the tokens where ``mask`` is true.

    Args:
        s_logits: student logits ``[..., V]`` (any float dtype; gradients flow to it).
        t_logits: teacher logits ``[..., V]``, or top-k logits ``[..., k]`` with ``t_indices``.
        mask: ``[...]`` bool, the tokens that count (padding and unlabelled positions false).
        chunk_size: tokens per checkpointed chunk (0: one chunk, no checkpointing).
    """
    V = s_logits.shape[-1]
    s = s_logits.reshape(-1, V)
    t = t_logits.reshape(-1, t_logits.shape[-1])
    idx = t_indices.reshape(-1, t_indices.shape[-1]) if t_indices is not None else None
    if mask is not None:
        keep = mask.reshape(-1).nonzero().squeeze(-1)
        s, t = s.index_select(0, keep), t.index_select(0, keep)
        idx = idx.index_select(0, keep) if idx is not None else None
    n = s.shape[0]
    if n == 0:
        return s_logits.sum() * 0.0
    if not chunk_size or chunk_size >= n:
        return token_divergence(s, t, kind, temperature, beta, idx).sum() / n
    total = s.new_zeros((), dtype=torch.float32)
    for i in range(0, n, chunk_size):
        part = (s[i : i + chunk_size], t[i : i + chunk_size], idx[i : i + chunk_size] if idx is not None else None)

        def chunk(sc, tc, ic):
            return token_divergence(sc, tc, kind, temperature, beta, ic).sum()

        total = total + checkpoint(chunk, *part, use_reentrant=False)
    return total / n


def shift_for_next_token(logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None):
    """Logits at positions ``0..T-2`` predict tokens ``1..T-1``: returns ``(logits, labels, mask)``."""
    labels = input_ids[:, 1:]
    mask = attention_mask[:, 1:].bool() if attention_mask is not None else torch.ones_like(labels, dtype=torch.bool)
    return logits[:, :-1], labels, mask


def cross_entropy(s_logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, chunk_size: int = 1024) -> torch.Tensor:
    """Next-token cross-entropy over masked tokens, chunked like :func:`distill_loss`."""
    V = s_logits.shape[-1]
    s = s_logits.reshape(-1, V)[mask.reshape(-1)]
    y = labels.reshape(-1)[mask.reshape(-1)]
    n = s.shape[0]
    if n == 0:
        return s_logits.sum() * 0.0
    if not chunk_size or chunk_size >= n:
        return F.cross_entropy(s.float(), y, reduction="sum") / n
    total = s.new_zeros((), dtype=torch.float32)
    for i in range(0, n, chunk_size):
        total = total + checkpoint(lambda a, b: F.cross_entropy(a.float(), b, reduction="sum"),
                                   s[i : i + chunk_size], y[i : i + chunk_size], use_reentrant=False)
    return total / n
