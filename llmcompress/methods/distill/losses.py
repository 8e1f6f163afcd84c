"""Distillation losses on next-token distributions (pure tensor functions).

- forward KL, ``T^2 * KL(p_t || p_s)`` with temperature ``T`` (Hinton, Vinyals, Dean, 2015): the
  student covers every mode of the teacher;
- reverse KL, ``T^2 * KL(p_s || p_t)`` (MiniLLM, Gu et al., 2024): mode-seeking;
- generalized JSD with ``beta`` (GKD, Agarwal et al., 2024): ``beta * KL(p_t || m) + (1 - beta) *
  KL(p_s || m)``, ``m = beta * p_t + (1 - beta) * p_s``; forward KL as beta -> 0 up to scale,
  reverse KL as beta -> 1.

Memory: the loss walks the tokens in chunks and computes each chunk's gradient right away, so
the float32 softmaxes of both models exist for one chunk at a time, never as full ``[batch, seq,
vocab]`` tensors. The gradient goes into one buffer the size of the student's logits, or, with
``reuse_logits`` (the trainer's case: nothing reads the logits after the loss), into the logits'
own memory, chunk by chunk once that chunk's loss is computed: the loss then needs only one
chunk's temporaries beyond its inputs.

A teacher given as top-k (values, indices) from the logit cache, with the log of the probability
mass outside its top k (``t_tail``, stored by the cache), is a distribution over k + 1 buckets: its
k tokens and "everything else". The student's distribution is coarsened the same way (its
probabilities at the k tokens and the rest of its mass), and every loss compares the two (k + 1)-bucket
distributions: exact for the buckets, a lower bound of the full-vocabulary divergence, and it never
rewards the student for pushing the tail to zero. Without ``t_tail`` (top-k logits only), forward KL
compares the teacher's softmax over the k tokens with the student's full-vocabulary log-probabilities
there, and reverse KL and JSD both distributions renormalized over the k tokens; measured on
SmolLM2-135M, that truncation made the student over-confident (see BENCHMARKS.md).

Intermediate states (optional, for students as wide as the teacher, such as a structurally pruned
copy of it): the student's decoder-layer outputs follow the teacher's, as in Minitron's
intermediate-state loss (Muralidharan et al., 2024, "Compact Language Models via Pruning and
Knowledge Distillation") and TinyBERT's (Jiao et al., 2020). The error of each token is relative to
the teacher's state norm, because the residual stream's scale differs by orders of magnitude
between positions (the first one carries the attention sink's massive activation) and layers: a
plain MSE would train little else.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LOSSES = ("forward_kl", "reverse_kl", "jsd")


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row from log-probabilities (finite: log_softmax of finite logits never gives -inf)."""
    return (log_p.exp() * (log_p - log_q)).sum(-1)


# log-probabilities below this count as zero mass (an empty tail when k equals the vocabulary)
_LOG_FLOOR = -80.0


def _bucket_log_probs(s: torch.Tensor, t: torch.Tensor, idx: torch.Tensor, t_tail: torch.Tensor):
    """Teacher and student log-probabilities over (top-k tokens, the rest), ``[n, k + 1]`` each."""
    lse_s = torch.logsumexp(s, -1, keepdim=True)
    log_s_top = s.gather(-1, idx) - lse_s
    rest = s.scatter(-1, idx, float("-inf"))
    log_s_tail = (torch.logsumexp(rest, -1, keepdim=True) - lse_s).clamp(min=_LOG_FLOOR)
    tail = t_tail.float().unsqueeze(-1).clamp(min=_LOG_FLOOR, max=0.0)
    log_t_top = F.log_softmax(t, -1) + torch.log(-torch.expm1(tail))  # top-k share 1 - p_tail
    return torch.cat([log_t_top, tail], -1), torch.cat([log_s_top, log_s_tail], -1)


def token_divergence(s_logits: torch.Tensor, t_logits: torch.Tensor, kind: str, temperature: float = 1.0,
                     beta: float = 0.5, t_indices: torch.Tensor | None = None,
                     t_tail: torch.Tensor | None = None) -> torch.Tensor:
    """Per-token divergence ``[n]`` between student logits ``[n, V]`` and teacher logits ``[n, V]``
    (or the teacher's top-k logits ``[n, k]`` at ``t_indices``, with ``t_tail`` ``[n]`` the log of
    its probability outside them at this temperature), times ``T^2``."""
    s = s_logits.float() / temperature
    t = t_logits.float() / temperature
    if t_indices is None:
        log_t, log_s = F.log_softmax(t, -1), F.log_softmax(s, -1)
    elif t_tail is not None:
        log_t, log_s = _bucket_log_probs(s, t, t_indices.long(), t_tail)
    elif kind == "forward_kl":
        log_t, log_s = F.log_softmax(t, -1), F.log_softmax(s, -1).gather(-1, t_indices.long())
    else:
        log_t, log_s = F.log_softmax(t, -1), F.log_softmax(s.gather(-1, t_indices.long()), -1)
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


class _ChunkedTokenLoss(torch.autograd.Function):
    """``sum_i fn(s_i, *rows_i)`` over token chunks, with its gradient computed chunk by chunk in the
    forward pass and written into one buffer the size of ``s``: peak memory is that buffer plus one
    chunk's float32 intermediates (autograd over slices would add a full-size zero-padded gradient
    per chunk and an accumulation buffer)."""

    @staticmethod
    def forward(ctx, s, fn, chunk_size, reuse, *rows):
        # reuse: each chunk's gradient overwrites that chunk of ``s`` once its loss is computed
        # (lm_head's backward needs its input and weight, never its output)
        grad = (s if reuse else torch.empty_like(s)) if s.requires_grad else None
        total = torch.zeros((), dtype=torch.float32, device=s.device)
        for i in range(0, s.shape[0], chunk_size):
            sc = s[i : i + chunk_size].detach().requires_grad_(grad is not None)
            part = [r[i : i + chunk_size] if r is not None else None for r in rows]
            with torch.enable_grad():
                value = fn(sc, *part)
            if grad is not None:
                grad[i : i + chunk_size] = torch.autograd.grad(value, sc)[0]
            total += value.detach()
        ctx.save_for_backward(grad)
        ctx.n_rows = len(rows)
        return total

    @staticmethod
    def backward(ctx, grad_out):
        (grad,) = ctx.saved_tensors
        # gradients for (s, fn, chunk_size, reuse, *rows): only s has one
        return (grad.mul_(grad_out.to(grad.dtype)) if grad is not None else None, None, None, None) + (None,) * ctx.n_rows


def _flat(x, width=None):
    return None if x is None else x.reshape(-1, width) if width else x.reshape(-1)


def token_losses(s_logits: torch.Tensor, *, t_logits=None, t_indices=None, t_tail=None, labels=None, mask=None,
                 kind: str = "forward_kl", temperature: float = 1.0, beta: float = 0.5, alpha: float = 0.0,
                 chunk_size: int = 1024, reuse_logits: bool = False) -> torch.Tensor:
    """Mean over the ``mask``-ed tokens of ``alpha * CE(labels) + (1 - alpha) * divergence(teacher)``.

    Args:
        s_logits: student logits ``[..., V]`` (gradients flow to it).
        t_logits: teacher logits ``[..., V]``, or top-k logits ``[..., k]`` with ``t_indices``
            (not needed when ``alpha == 1``) and, from the cache, ``t_tail`` ``[...]``: the log of the
            teacher's probability outside its top k.
        labels: next-token ids ``[...]`` (needed when ``alpha > 0``).
        mask: ``[...]`` bool, the tokens that count (padding and unlabelled positions false).
        chunk_size: tokens per chunk; 0 computes everything at once with plain autograd (the naive
            reference: several full ``[tokens, V]`` float32 tensors).
        reuse_logits: store the gradient in ``s_logits``' memory (its values are destroyed): for
            callers that read the logits no more after the loss.
    """
    V = s_logits.shape[-1]
    s = s_logits.reshape(-1, V)
    m = _flat(mask).to(s.device) if mask is not None else torch.ones(s.shape[0], dtype=torch.bool, device=s.device)
    n = int(m.sum())
    if n == 0:
        return s_logits.sum() * 0.0
    t = _flat(t_logits, t_logits.shape[-1]) if t_logits is not None else None
    idx = _flat(t_indices, t_indices.shape[-1]) if t_indices is not None else None
    tail = _flat(t_tail)
    y = _flat(labels)

    def fn(sc, tc, ic, tl, yc, mc):
        loss = 0.0
        if alpha > 0:
            loss = alpha * F.cross_entropy(sc.float(), yc, reduction="none")
        if alpha < 1:
            loss = loss + (1 - alpha) * token_divergence(sc, tc, kind, temperature, beta, ic, tl)
        return (loss * mc).sum()

    if not chunk_size or chunk_size >= s.shape[0]:
        return fn(s, t, idx, tail, y, m.float()) / n
    return _ChunkedTokenLoss.apply(s, fn, chunk_size, reuse_logits, t, idx, tail, y, m.float()) / n


def distill_loss(s_logits: torch.Tensor, t_logits: torch.Tensor, mask: torch.Tensor | None = None, *,
                 kind: str = "forward_kl", temperature: float = 1.0, beta: float = 0.5,
                 t_indices: torch.Tensor | None = None, t_tail: torch.Tensor | None = None, chunk_size: int = 1024,
                 reuse_logits: bool = False) -> torch.Tensor:
    """Mean divergence over the ``mask``-ed tokens (see :func:`token_losses`)."""
    return token_losses(s_logits, t_logits=t_logits, t_indices=t_indices, t_tail=t_tail, mask=mask, kind=kind,
                        temperature=temperature, beta=beta, chunk_size=chunk_size, reuse_logits=reuse_logits)


def layer_pairs(n_student: int, n_teacher: int) -> list[tuple[int, int]]:
    """Which teacher decoder layer's output each student layer's output learns, as indices into the
    ``hidden_states`` tuples that transformers returns (0 is the embeddings, ``i`` the output of
    decoder layer ``i``): student layer ``i`` of ``n_student`` against teacher layer
    ``round(i * n_teacher / n_student)``, so the last layers meet and a shallower student learns
    evenly spaced teacher layers (the identity when the depths are equal)."""
    if n_student < 1 or n_teacher < 1:
        raise ValueError(f"layer counts must be positive, got {n_student} and {n_teacher}")
    return [(i, round(i * n_teacher / n_student)) for i in range(1, n_student + 1)]


def hidden_state_loss(s_states, t_states, pairs: list[tuple[int, int]], mask: torch.Tensor | None = None,
                      eps: float = 1e-6) -> torch.Tensor:
    """Mean over layer pairs and ``mask``-ed tokens of ``||h_s - h_t||^2 / ||h_t||^2``.

    Args:
        s_states, t_states: ``hidden_states`` tuples of ``[batch, seq, hidden]`` tensors (the student's
            carry gradients); both models must have the same hidden size.
        pairs: ``(student index, teacher index)`` into the tuples (:func:`layer_pairs`).
        mask: ``[batch, seq]``, the positions that count (padding false).
    """
    total = 0.0
    for si, ti in pairs:
        s, t = s_states[si].float(), t_states[ti].float().to(s_states[si].device)
        if s.shape != t.shape:
            raise ValueError(f"student state {si} has shape {tuple(s.shape)}, teacher state {ti} {tuple(t.shape)}: "
                             "the intermediate-state loss needs the same hidden size")
        rel = (s - t).pow(2).sum(-1) / (t.pow(2).sum(-1) + eps)
        if mask is not None:
            m = mask.to(rel.device, rel.dtype)
            total = total + (rel * m).sum() / m.sum().clamp(min=1)
        else:
            total = total + rel.mean()
    return total / len(pairs)


def shift_for_next_token(logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None):
    """Logits at positions ``0..T-2`` predict tokens ``1..T-1``: returns ``(logits, labels, mask)``."""
    labels = input_ids[:, 1:]
    mask = attention_mask[:, 1:].bool() if attention_mask is not None else torch.ones_like(labels, dtype=torch.bool)
    return logits[:, :-1], labels, mask


def cross_entropy(s_logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, chunk_size: int = 1024) -> torch.Tensor:
    """Next-token cross-entropy over masked tokens, chunked like :func:`token_losses`."""
    return token_losses(s_logits, labels=labels, mask=mask, alpha=1.0, chunk_size=chunk_size)
