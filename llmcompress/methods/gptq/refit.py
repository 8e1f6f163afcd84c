"""GPTQ's scale refit: given the codes the column loop chose, each row's group scales that minimize the
layer's output error (a small least-squares problem per row). Pure tensor code."""

from __future__ import annotations

import torch


# refit_scales solves at most this many entries of its per-row systems at once.
REFIT_CHUNK = 1 << 24


def refit_scales(W: torch.Tensor, H: torch.Tensor, Q: torch.Tensor, scale: torch.Tensor, g: int,
                 scale_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Refit each row's group scales to GPTQ's objective, keeping its integer codes.

    GPTQ chooses the codes with the scales fixed up front (from the weights alone, by the
    observer); given the codes, the layer's output error ``(w - Q) H (w - Q)^T`` is a quadratic in
    the row's scales, since each dequantized weight is ``scale_g * (q - zero_g)``: the best scales
    solve a ``[groups x groups]`` linear system per row,
    ``A s = b`` with ``A_gh = c_g^T H_gh c_h`` and ``b_g = c_g^T (H w)_g`` (``c`` the codes minus
    the zero point). This is the scale half of alternating between codes and scales; GPTQ's
    column loop (like AdaRound, Nagel et al., "Up or Down? Adaptive Rounding for Post-Training
    Quantization", ICML 2020) optimizes the codes for fixed scales. Zero points stay as they are,
    and so do zero (pruned) weights (their code minus zero point is 0).

    Args:
        W: the target weights ``[rows, cols]`` float32 (GPTAQ's shifted target when it applies).
        H: the dampened Hessian ``[cols, cols]`` float32 of the column loop, in the same column order.
        Q: GPTQ's dequantized weights ``[rows, cols]`` float32.
        scale: ``[rows, groups]`` float32 holding values of ``scale_dtype``.
        g: group size.
        scale_dtype: the dtype scales are stored in (new scales are rounded to it).

    Returns:
        ``(Q, scale, refit, ratio)``: a row keeps its old scales (``refit`` False) unless the new,
        rounded ones are positive, finite and lower its objective; ``ratio`` is the whole
        weight's objective after the refit over before.
    """
    rows, cols = W.shape
    n_groups = cols // g
    # Rows are independent: bound the [rows, groups, groups] systems to REFIT_CHUNK elements at a time
    # (a 70B model's down_proj, 224 groups of 128, would otherwise hold 1.6 GB of them at once).
    step = max(1, REFIT_CHUNK // (n_groups * n_groups + cols))
    parts = [_refit_rows(W[i : i + step], H, Q[i : i + step], scale[i : i + step], g, scale_dtype)
             for i in range(0, rows, step)]
    Q, scale, ok, before, after = (torch.cat(t) for t in zip(*parts))
    total = float(before.sum())
    return Q, scale, ok, float(after.sum()) / total if total > 0 else 1.0


def _refit_rows(W, H, Q, scale, g: int, scale_dtype):
    """:func:`refit_scales` on a block of rows; also returns each row's objective before and after."""
    rows, cols = W.shape
    n_groups = cols // g
    C = Q / scale.repeat_interleave(g, dim=1)  # codes minus zero points, exact integers up to rounding
    C.round_()
    A = torch.zeros(rows, n_groups, n_groups, device=W.device)
    for h in range(n_groups):  # A[:, :h+1, h] from group h's share of C H; A is symmetric
        e = (h + 1) * g
        T = C[:, h * g : e] @ H[h * g : e, :e]
        A[:, : h + 1, h] = (C[:, :e] * T).view(rows, h + 1, g).sum(-1)
    del T
    A = A + torch.triu(A, 1).transpose(1, 2)
    WH = W @ H
    b = (C * WH).view(rows, n_groups, g).sum(-1)
    const = (WH * W).sum(-1)  # w^T H w: the objective's constant
    del WH
    # Groups whose codes are all zero have no say in the objective: pin them to their old scale.
    diag = torch.diagonal(A, dim1=1, dim2=2)
    empty = diag <= 0
    A = A + torch.diag_embed(torch.where(empty, torch.ones_like(diag), torch.zeros_like(diag)))
    b = torch.where(empty, scale, b)
    const = const + (scale * scale * empty).sum(-1)  # the pinned groups' s^2 - 2 s s_old, cancelled
    new, info = torch.linalg.solve_ex(A, b.unsqueeze(-1))
    new = new.squeeze(-1).to(scale_dtype).float()

    def objective(s):  # (w - Q) H (w - Q)^T for dequantized rows C * s
        return (s.unsqueeze(1) @ A @ s.unsqueeze(-1)).squeeze(-1).squeeze(-1) - 2 * (b * s).sum(-1) + const

    ok = (info == 0) & torch.isfinite(new).all(-1) & (new > 0).all(-1)
    before = objective(scale)
    after = objective(torch.where(ok.unsqueeze(-1), new, scale))
    ok &= after < before
    scale = torch.where(ok.unsqueeze(-1), new, scale)
    return C * scale.repeat_interleave(g, dim=1), scale, ok, before, torch.where(ok, after, before)
