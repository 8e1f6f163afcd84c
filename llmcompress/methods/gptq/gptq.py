"""GPTQ: the algorithm as pure tensor functions (no I/O, no modules).

Frantar, Ashkboos, Hoefler, Alistarh. "GPTQ: Accurate Post-Training Quantization for
Generative Pre-trained Transformers", ICLR 2023 (arXiv:2210.17323).

For a Linear layer with weight ``W`` ``[rows, cols]`` and calibration inputs ``X``,
GPTQ quantizes ``W`` one column at a time and spreads each column's rounding error over
the columns not yet quantized, weighted by the inverse Hessian ``H = 2 X^T X / n`` of the
layer's squared output error, so that ``||W X - Q X||`` stays small. Columns are processed
in blocks with lazy updates (the paper's "lazy batch" trick); the inverse Hessian is
taken once through a Cholesky factorization.

GPTAQ's asymmetric calibration (Li et al., "GPTAQ: Efficient Finetuning-Free Quantization for
Asymmetric Calibration", ICML 2025; first published as GPTQv2) changes
the objective to ``||W X - Q X~||``, where ``X~`` are the layer's inputs in the partly quantized
model and ``X`` the full-precision model's, so each layer also undoes the error that reached it.
With ``H = X~ X~^T`` and ``D = (X - X~) X~^T`` the objective equals ``(Q - W*) H (Q - W*)^T`` plus
a constant, where ``W* = W + W D H^-1`` is its unconstrained minimizer: it is GPTQ's problem with
the target ``W*`` in place of ``W`` and the same ``H`` (:func:`asymmetric_target`). (The paper folds
the shift into the column loop instead; moving it up front keeps one column loop and kernel.) ``alpha`` blends the
two objectives (``W + alpha W D H^-1``), as the paper's alpha does.

After the column loop, :func:`refit_scales` solves for each row's group scales given its codes
(the scale half of alternating between codes and scales; GPTQ itself fixes the scales first).

Rows are independent given ``H``: weights that read the same input (q/k/v, gate/up) are
quantized in one call by stacking their rows, which gives the same result as separate
calls and cuts the per-column Python overhead.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch

from ..quant.grid import QuantArgs, group_qparams, mse_shrink, qparams
from . import kernel as _kernel


logger = logging.getLogger(__name__)


class HessianError(RuntimeError):
    """Cholesky failed even after raising the dampening."""


@contextmanager
def _tf32_matmul():
    m = torch.backends.cuda.matmul
    if hasattr(m, "fp32_precision"):  # torch >= 2.9
        old = m.fp32_precision
        m.fp32_precision = "tf32"
        try:
            yield
        finally:
            m.fp32_precision = old
    else:  # pragma: no cover - older torch
        old = m.allow_tf32
        m.allow_tf32 = True
        try:
            yield
        finally:
            m.allow_tf32 = old


@contextmanager
def _bf16_cpu_matmul():
    """float32 matmuls on CPU run on oneDNN's bf16 kernels (float32 accumulation and output).

    For operands that hold bf16 values (calibration activations) nothing is rounded on the
    way in, so the result is a float32 product (relative error ~5e-7 on 4096 x 4864 inputs,
    like IEEE float32) at about half its time on CPUs with AMX / AVX512-BF16. Without the
    setting (torch < 2.9) the product is plain float32.
    """
    m = getattr(torch.backends.mkldnn, "matmul", None)
    if m is None or not hasattr(m, "fp32_precision"):  # pragma: no cover - older torch
        yield
        return
    old = m.fp32_precision
    m.fp32_precision = "bf16"
    try:
        yield
    finally:
        m.fp32_precision = old


# Rows per block of the symmetric product on CPU: three blocks for Qwen2.5's 4864-wide
# down_proj, one for 896-wide inputs (timed with torch.mm on an AMX CPU, 4096 tokens a batch).
GRAM_BLOCK = 1664


def _add_gram(H: torch.Tensor, xt: torch.Tensor, alpha: float) -> None:
    """``H += alpha * xt xt^T`` for a contiguous float32 ``xt`` ``[cols, tokens]`` on CPU.

    Only the block rows on and right of the diagonal are multiplied; the blocks below are the
    transposes of those right of it (3 of 4 blocks for two block rows, 6 of 9 for three), so
    ``H`` also stays exactly symmetric. With the tokens on the inner, contiguous axis the
    kernel runs faster than on ``x.t()`` (a transposed view of ``[tokens, cols]``).
    """
    c = xt.shape[0]
    k = max(1, round(c / GRAM_BLOCK))
    bounds = [(i * c) // k for i in range(k + 1)]
    for a, b in zip(bounds[:-1], bounds[1:]):
        P = torch.mm(xt[a:b], xt[a:].t())
        H[a:b, a:].add_(P, alpha=alpha)
        if b < c:
            H[b:, a:b].add_(P[:, b - a :].t(), alpha=alpha)


def _accumulate(H: torch.Tensor | None, x: torch.Tensor, count: int):
    """``accumulate_hessian`` returning also ``x^T`` as a contiguous bf16 ``[cols, tokens]`` when
    the CPU bf16 path made one (GPTAQ reuses it for ``D``), else None."""
    x = x.reshape(-1, x.shape[-1])
    n = x.shape[0]
    if H is None:
        H = torch.zeros(x.shape[1], x.shape[1], device=x.device, dtype=torch.float32)
    total = count + n
    H.mul_(count / total)
    xt = None
    if x.dtype == torch.bfloat16 and x.device.type == "cpu":
        # Not a bf16 product: its output is rounded to bf16 (2^-9 relative per entry), which made
        # Qwen2.5's nearly singular o_proj Hessians indefinite (smallest eigenvalue -7 to -11
        # times the 1% dampening, exact: +1.0) and forced their dampening up to 100%. A float32
        # product on bf16 kernels (exact inputs, float32 output) costs 1.7x a bf16 one, not 4x.
        xt = x.t().contiguous()
        with _bf16_cpu_matmul():
            _add_gram(H, xt.float(), 2.0 / total)
    elif x.dtype in (torch.bfloat16, torch.float16) and x.is_cuda:
        # bf16 / fp16 values are exact in TF32 (10 mantissa bits), so TF32 tensor cores lose
        # nothing on the inputs; only their accumulation differs from IEEE float32 (max
        # relative error 3.6e-5 against float64 on an H100, float32 5.6e-6: far below the
        # 1% dampening). 3.6x faster; this product was most of GPTQ's GPU time (BENCHMARKS.md).
        with _tf32_matmul():
            H.addmm_(x.t().float(), x.float(), alpha=2.0 / total)
    else:
        H.addmm_(x.t().float(), x.float(), alpha=2.0 / total)
    return H, total, xt


def accumulate_hessian(H: torch.Tensor | None, x: torch.Tensor, count: float,
                       first_token_weight: float = 1.0) -> tuple[torch.Tensor, float]:
    """Add a batch of inputs to a running ``H = 2/n * sum x x^T`` (float32).

    Args:
        H: the running Hessian ``[cols, cols]`` or None.
        x: inputs ``[..., cols]`` (any leading shape: batch, tokens).
        count: tokens already in ``H``.
        first_token_weight: w > 1 counts the first position of each sequence of a
            ``[batch, seq, cols]`` input as w tokens (the attention sink; see
            :func:`llmcompress.methods.wanda.accumulate_sq_norms`).

    Returns:
        ``(H, count)`` updated.
    """
    first, extra = first_positions(x, first_token_weight)  # checked before H changes
    H, total, _ = _accumulate(H, x, count)
    if extra:
        # The first positions already count once: add (w - 1) more of their outer products.
        H.mul_(total / (total + extra))
        total += extra
        H.addmm_(first.t(), first, alpha=2.0 * (first_token_weight - 1.0) / total)
    return H, total


def first_positions(x: torch.Tensor, first_token_weight: float) -> tuple[torch.Tensor | None, float]:
    """The first position of each sequence of a ``[batch, seq, cols]`` input as float32 ``[batch, cols]``,
    and the tokens it adds when it counts as ``first_token_weight`` tokens instead of one
    (``(None, 0)`` for weight 1). Shared by Wanda's norms and the Hessians.

    Raises:
        ValueError: for a weight other than 1 on an input without a position axis.
    """
    if first_token_weight == 1.0:
        return None, 0.0
    if x.dim() < 3:  # the position axis is needed to find the first token
        raise ValueError(f"first_token_weight needs [batch, seq, features] inputs; got shape {tuple(x.shape)}")
    first = x[..., 0, :].reshape(-1, x.shape[-1]).float()
    return first, (first_token_weight - 1.0) * first.shape[0]


def accumulate_hessian_pair(state: tuple[torch.Tensor, torch.Tensor] | None, x: torch.Tensor, count: int,
                            ref: torch.Tensor) -> tuple[tuple[torch.Tensor, torch.Tensor], int]:
    """GPTAQ's statistics: ``H = 2/n sum x x^T`` and ``D = 2/n sum (ref - x) x^T`` (float32).

    Args:
        state: ``(H, D)`` or None.
        x: inputs in the model being quantized ``[..., cols]``.
        count: tokens already accumulated.
        ref: the same inputs in the unmodified model, same shape as ``x``.

    For bf16 inputs on CPU ``D`` is a transposed view of a contiguous buffer holding
    ``D^T = 2/n sum x^T (ref - x)``: that product runs with the layout the bf16 kernel is
    fastest on, reusing the contiguous ``x^T`` made for ``H``.
    """
    H, D = state if state is not None else (None, None)
    H, total, xt = _accumulate(H, x, count)
    x = x.reshape(-1, x.shape[-1])
    ref = ref.reshape(-1, ref.shape[-1])
    if D is None:  # on the CPU bf16 path a view of D^T's buffer, else plain
        D = torch.zeros_like(H).t() if xt is not None else torch.zeros_like(H)
    D.mul_(count / total)
    if xt is not None and ref.dtype == torch.bfloat16:
        # A bf16 product (float32 accumulation, output rounded to bf16 once per batch): D only
        # shifts the target weights and need not stay positive definite as H must, so rounding
        # it (and the differences) to bf16 (2^-9 relative) is far below its own noise.
        # A bf16 subtraction computes in float32 and rounds once: the same bits as
        # subtracting in float32 and then casting, without two float32 copies of the inputs.
        D.t().add_(torch.mm(xt, ref - x), alpha=2.0 / total)
        return (H, D), total
    dx = ref.float() - x.float()
    if x.is_cuda:
        with _tf32_matmul():  # TF32 rounding of the differences: as above, far below D's own noise
            D.addmm_(dx.t(), x.float(), alpha=2.0 / total)
    else:
        D.addmm_(dx.t(), x.float(), alpha=2.0 / total)
    return (H, D), total


def accumulate_gptaq(state: tuple | None, x: torch.Tensor, count: int, ref: torch.Tensor,
                     weight: torch.Tensor | None = None) -> tuple[tuple, int]:
    """GPTAQ's statistics as ``(H, D, P)``: :func:`accumulate_hessian_pair`'s ``H`` and ``D`` (``P``
    None), or, given the ``weight`` of a module that has its input to itself and fewer than half
    as many rows as columns (down_proj), ``H`` and ``P = W D = 2/n sum W (ref - x) x^T`` (``D``
    None).

    The shifted target needs only ``W D``; for down_proj (``[hidden, intermediate]``) the two
    products of ``P`` cost ``2 rows cols`` per token against ``cols^2`` for ``D``: 2.7x fewer on
    Qwen2.5-0.5B, whose down_proj ``D`` was most of GPTAQ's statistics time. ``weight`` is the
    weight the forwards use, unchanged while its layer group is observed.
    """
    if weight is None or 2 * weight.shape[0] >= weight.shape[1]:
        (H, D), total = accumulate_hessian_pair(None if state is None else state[:2], x, count, ref)
        return (H, D, None), total
    H, _, P = state if state is not None else (None, None, None)
    H, total, xt = _accumulate(H, x, count)
    x = x.reshape(-1, x.shape[-1])
    dx = ref.reshape(-1, ref.shape[-1]) - x
    rows, cols = weight.shape
    if P is None:  # on the CPU bf16 path a view of P^T's buffer (the product's fast layout)
        P = torch.zeros(cols, rows, device=x.device).t() if xt is not None else torch.zeros(rows, cols, device=x.device)
    P.mul_(count / total)
    if xt is not None and dx.dtype == torch.bfloat16:
        # bf16 products, each output rounded once per batch, as D's is (far below P's own noise)
        y = torch.mm(dx, weight.to(dx.dtype).t())  # [tokens, rows]: W (ref - x), token by token
        P.t().add_(torch.mm(xt, y), alpha=2.0 / total)
        return (H, None, P), total
    with _tf32_matmul() if x.is_cuda else nullcontext():
        y = torch.mm(dx.float(), weight.float().t())
        P.addmm_(y.t(), x.float(), alpha=2.0 / total)
    return (H, None, P), total


accumulate_gptaq.takes_weight = True


def add_diagonal(H: torch.Tensor, value) -> torch.Tensor:
    """``H + value I`` as a new tensor: the same bits as adding ``value * eye``, without building the
    identity and two more full matrices (for a 4864-wide Hessian 0.08 s a call, three calls a layer group)."""
    A = H.clone()
    A.diagonal().add_(value)
    return A


def _dampened(H: torch.Tensor, damp: float, name: str, factor, max_tries: int = 6):
    """``(factor(H + lambda I), damp_used)``, ``lambda = damp * mean(diag H)``; ``factor`` returns
    None when the dampened matrix is not usable, and the dampening is then multiplied by 10
    (badly conditioned Hessians from few or degenerate samples). After ``max_tries`` a
    :class:`HessianError` names the layer."""
    mean_diag = torch.mean(torch.diag(H))
    for _ in range(max_tries):
        out = factor(add_diagonal(H, damp * mean_diag))
        if out is not None:
            return out, damp
        damp *= 10
    raise HessianError(
        f"layer '{name}': the Hessian is not positive definite even with dampening {damp / 10:g}; "
        "calibrate on more (or more varied) samples, or raise 'damp'")


def asymmetric_target(W: torch.Tensor, H: torch.Tensor, D: torch.Tensor, alpha: float, damp: float,
                      name: str = "") -> torch.Tensor:
    """``W + alpha W D (H + lambda I)^-1``: the weights that best map the quantized model's inputs
    to the full-precision outputs (GPTAQ), a ridge regression with ``lambda = damp * mean(diag H)``.

    Args:
        W: ``[rows, cols]`` float32.
        H, D: from :func:`accumulate_hessian_pair` (dead columns already patched in ``H``).
        alpha: blend, 0 (GPTQ's target ``W``) .. 1 (the full asymmetric target).
        damp: fraction of the mean Hessian diagonal added before solving (raised like GPTQ's
            if the Cholesky factorization fails).

    Solved with one Cholesky factorization (no inverse). When the target's dampening equals the
    column loop's, GPTQ and SparseGPT instead reuse the inverse their loop factorizes anyway
    (:func:`inverse_hessian_cholesky` with ``with_inverse``).
    """
    return W + alpha * _ridge_solve(W @ D, H, damp, name)


def _ridge_solve(WD: torch.Tensor, H: torch.Tensor, damp: float, name: str) -> torch.Tensor:
    """``WD (H + lambda I)^-1`` from one Cholesky factorization (H is symmetric, so this is
    ``(A^-1 (W D)^T)^T``)."""
    L, _ = _dampened(H, damp, name, _cholesky_or_none)
    return torch.cholesky_solve(WD.t(), L).t()


def _cholesky_or_none(A: torch.Tensor):
    L, info = torch.linalg.cholesky_ex(A)
    return L if info == 0 else None


def inverse_hessian_cholesky(H: torch.Tensor, damp: float, name: str = "", max_tries: int = 6,
                             with_inverse: bool = False):
    """Upper Cholesky factor of ``(H + lambda I)^-1``, ``lambda = damp * mean(diag H)``.

    The dampening is multiplied by 10 on each failure (badly conditioned Hessians from
    few or degenerate samples); after ``max_tries`` a :class:`HessianError` names the layer.

    GPTQ's reference code factorizes, inverts and factorizes again. With ``J`` the reversal of
    rows and columns, ``J A J = L L^T`` gives ``A^-1 = (J L^-1 J)^T (J L^-1 J)`` where ``J L^-1 J`` is
    upper triangular: the same factor from one Cholesky factorization and one triangular inverse
    (0.72 s against 1.10 s at width 4864 on a 2-core CPU, and closer to a float64 reference:
    relative error 1.4e-7 against 2.6e-7).

    Returns:
        ``(U, damp_used)``, or ``(U, (H + lambda I)^-1, damp_used)`` with ``with_inverse``.
    """
    def inverse_factor(A):
        L, info = torch.linalg.cholesky_ex(A.flip(0, 1))
        if info != 0:
            return None
        U = lower_triangular_inverse(L).flip(0, 1)
        # A NaN or inf anywhere in U reaches the diagonal (U_jj takes every U_ij^2 above it):
        # checking the diagonal is as good as the whole matrix, at 1/cols of the cost.
        if not torch.isfinite(torch.diagonal(U)).all():
            return None
        return (U, torch.cholesky_inverse(L).flip(0, 1)) if with_inverse else U

    out, damp_used = _dampened(H, damp, name, inverse_factor, max_tries)
    return (*out, damp_used) if with_inverse else (out, damp_used)


# lower_triangular_inverse solves blocks up to this width directly (a triangular solve against the
# identity); larger ones split in two, so most of the work runs as matrix products.
TRIANGULAR_LEAF = 1024


def lower_triangular_inverse(L: torch.Tensor) -> torch.Tensor:
    """``L^-1`` for a lower-triangular ``L``, blocked: ``[[A, 0], [B, C]]^-1 = [[A^-1, 0], [-C^-1 B A^-1, C^-1]]``.

    torch has no triangular inverse (LAPACK's trtri); a triangular solve against the identity
    costs ``n^3`` flops at triangular-solve speed, while the recursion spends ``2n^3/3`` in matrix
    products (0.34 s against 0.56 s at width 4864 on a 2-core CPU, equally accurate).
    """
    n = L.shape[0]
    if n <= TRIANGULAR_LEAF:
        return torch.linalg.solve_triangular(L, torch.eye(n, dtype=L.dtype, device=L.device), upper=False)
    h = n // 2
    X = torch.zeros_like(L)
    A_inv = lower_triangular_inverse(L[:h, :h])
    C_inv = lower_triangular_inverse(L[h:, h:])
    X[:h, :h] = A_inv
    X[h:, h:] = C_inv
    X[h:, :h] = -(C_inv @ (L[h:, :h] @ A_inv))
    return X


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


@dataclass
class GPTQResult:
    """Dequantized weights and the grid parameters, in the original column order."""

    weight: torch.Tensor  # [rows, cols], values exactly representable in ``dtype``
    scale: torch.Tensor  # [rows, n_groups] (dtype)
    zero: torch.Tensor | None  # [rows, n_groups]
    loss: float  # sum of squared, H-weighted rounding errors (the paper's objective, up to scale)
    damp: float


def _group_params(w: torch.Tensor, args: QuantArgs, observer: str):
    scale, zero = qparams(w, args, mse_shrink(w, args) if observer == "mse" else 1.0)
    return scale.squeeze(-1), (zero.squeeze(-1) if zero is not None else None)


def quantize_columns(Wt, U1, dinv, St, Zt, Kt, Qt, Et, start: int, end: int, args: QuantArgs) -> None:
    """GPTQ's inner loop over columns ``start..end`` of one block, in place.

    Block tensors are stored transposed (``[block, rows]``) so that a column of the weight
    is a contiguous row here. Each column is rounded to its grid (scales ``St``, zero
    points ``Zt``, keep-mask ``Kt`` or None) into ``Qt``; its error scaled by the inverse
    of the Cholesky diagonal (``dinv``) goes to ``Et`` and is subtracted from the block's
    remaining columns (a rank-1 update).
    """
    qmin, qmax = args.qmin, args.qmax
    for i in range(start, end):
        w = Wt[i]
        q = torch.div(w, St[i]).round_()
        if Zt is not None:
            q.add_(Zt[i]).clamp_(qmin, qmax).sub_(Zt[i])
        else:
            q.clamp_(qmin, qmax)
        torch.mul(q, St[i], out=Qt[i])  # exact in float32; rounded to the storage dtype once, at the end
        if Kt is not None:
            Qt[i].mul_(Kt[i])
        torch.sub(w, Qt[i], out=Et[i]).mul_(dinv[i])
        Wt[i:].addr_(U1[i, i:], Et[i], alpha=-1)


KERNELS = ("auto", "triton", "graph", "eager")


def kernel_mode(device: torch.device) -> str:
    """How the column loop runs: ``triton`` (one kernel per block, CUDA), ``graph`` (the torch
    loop replayed as a CUDA graph) or ``eager`` (the torch loop; the CPU path).

    ``LLMCOMPRESS_GPTQ_KERNEL`` overrides the automatic choice (``auto``: triton on CUDA when
    Triton imports, else graph on CUDA, else eager); ``triton`` on a CPU tensor needs
    ``TRITON_INTERPRET=1`` (tests). ``LLMCOMPRESS_GPTQ_CUDA_GRAPH=0`` still selects eager.
    """
    mode = os.environ.get("LLMCOMPRESS_GPTQ_KERNEL", "auto").lower()
    if mode not in KERNELS:
        raise ValueError(f"LLMCOMPRESS_GPTQ_KERNEL={mode!r}: expected one of {', '.join(KERNELS)}")
    if mode == "triton" and not _kernel.available():
        raise RuntimeError("LLMCOMPRESS_GPTQ_KERNEL=triton but Triton is not installed; pip install triton, "
                           "or unset the variable")
    if mode == "auto":
        if device.type != "cuda":
            return "eager"
        if os.environ.get("LLMCOMPRESS_GPTQ_CUDA_GRAPH", "1") == "0":
            return "eager"
        return "triton" if _kernel.available() else "graph"
    return mode


# On CUDA the column loop is bound by kernel-launch overhead (several tiny kernels per
# column); replaying it as a CUDA graph removes the Python and launch cost. Graphs are
# cached per (device, rows, block, zero-point, keep-mask) shape.
_GRAPHS: dict = {}


def _block_graph(rows: int, block: int, asym: bool, masked: bool, args: QuantArgs, device: torch.device):
    if device.type != "cuda":  # kernel_mode() has already honoured LLMCOMPRESS_GPTQ_CUDA_GRAPH
        return None
    key = (device, rows, block, asym, masked, args.qmin, args.qmax)
    if key in _GRAPHS:
        return _GRAPHS[key]
    try:
        buf = {name: torch.zeros(block, rows, device=device) for name in ("Wt", "St", "Qt", "Et")}
        buf["St"].fill_(1.0)
        buf["U1"] = torch.eye(block, device=device)
        buf["dinv"] = torch.ones(block, device=device)
        buf["Zt"] = torch.zeros(block, rows, device=device) if asym else None
        buf["Kt"] = torch.ones(block, rows, device=device) if masked else None

        def body():
            quantize_columns(buf["Wt"], buf["U1"], buf["dinv"], buf["St"], buf["Zt"], buf["Kt"], buf["Qt"], buf["Et"],
                             0, block, args)

        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            body()  # warm-up outside the capture, as CUDA graphs require
        torch.cuda.current_stream(device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            body()
    except Exception as exc:  # a driver or allocator that cannot capture: run eagerly
        logger.warning("GPTQ CUDA graph capture failed (%s); running the column loop eagerly", exc)
        _GRAPHS[key] = None
        return None

    def run(Wt, U1, dinv, St, Zt, Kt):
        for name, value in (("Wt", Wt), ("U1", U1), ("dinv", dinv), ("St", St), ("Zt", Zt), ("Kt", Kt)):
            if value is not None:
                buf[name].copy_(value)
        graph.replay()
        return buf["Qt"], buf["Et"]

    _GRAPHS[key] = run
    return run


@torch.no_grad()
def gptq_quantize(
    W: torch.Tensor,
    H: torch.Tensor,
    args: QuantArgs,
    *,
    block_size: int = 128,
    damp: float = 0.01,
    act_order: bool = False,
    observer: str = "minmax",
    dtype: torch.dtype | None = None,
    scale_dtype: torch.dtype | None = None,
    name: str = "",
    D: torch.Tensor | None = None,
    alpha: float = 0.0,
    target_damp: float | None = None,
    WD: torch.Tensor | None = None,
    refit: bool = False,
    refit_damp: float | None = None,
) -> GPTQResult:
    """Quantize one weight matrix with GPTQ.

    Args:
        W: ``[rows, cols]`` weights (any float dtype; work is done in float32).
        H: ``[cols, cols]`` Hessian from :func:`accumulate_hessian`.
        args: grid (bits, group size, symmetry).
        block_size: columns per lazy-update block.
        damp: dampening as a fraction of the mean Hessian diagonal.
        act_order: process columns by decreasing Hessian diagonal. Groups stay *static*
            (scales from the original, contiguous column groups), so the checkpoint needs
            no ``g_idx`` indirection at run time.
        observer: ``minmax`` or ``mse`` (clipping search) for each group's scale.
        dtype: dtype the weights are stored in (scales are rounded to it before use, so the
            returned weights are exactly what a loader will rebuild); default ``W.dtype``.
        scale_dtype: dtype the scales are stored in (default ``dtype``); scales are rounded to it.
        name: layer name for error messages.
        D: GPTAQ's input-error statistic from :func:`accumulate_hessian_pair`; with ``alpha``
            > 0 the target becomes :func:`asymmetric_target` (grids are fitted to it).
        alpha: GPTAQ's blend (0: plain GPTQ).
        WD: instead of ``D``, the product ``W D`` (:func:`accumulate_gptaq`'s ``P``).
        target_damp: dampening of the shifted target's solve ``(H + lambda_t I)^-1`` (a ridge
            on the least-squares fit), if it should differ from ``damp`` (the column loop's).
        refit: after the column loop, refit each row's group scales to the objective with the
            codes fixed (:func:`refit_scales`).
        refit_damp: the refit's dampening, a fraction of the mean Hessian diagonal (default: the
            column loop's, after any automatic raise; never below it, which kept H positive definite).

    Zero weights (from pruning) stay zero. Columns whose inputs are always zero ("dead")
    are set to zero.
    """
    dtype = dtype or W.dtype
    scale_dtype = scale_dtype or dtype
    W = W.detach().float().clone()
    H = H.detach().float().clone()
    rows, cols = W.shape
    g = args.group_of(cols)
    if cols % g:
        raise ValueError(f"layer '{name}': {cols} columns are not divisible by group size {g}")
    n_groups = cols // g

    dead = torch.diag(H) == 0
    asym = (D is not None or WD is not None) and alpha > 0
    if asym and WD is None:
        # The target reproduces W ref: a dead column's weight still multiplies the full-precision
        # input there, so W D takes W before dead columns are zeroed (as P = W D from the
        # forward weight does), and the other columns make up for what the dead one loses.
        WD = W @ D.detach().float()
    H[dead, dead] = 1
    W[:, dead] = 0
    keep_zero = W == 0
    perm = torch.argsort(torch.diag(H), descending=True) if act_order else None
    H_orig = H
    if perm is not None:
        H = H[perm][:, perm]
    # One factorization serves the column loop and, with GPTAQ, the shifted target (in the
    # permuted order: W_p D_p H_p^-1 is W D H^-1 with its columns permuted).
    # With its own dampening the target is a separate ridge solve (one more Cholesky, no inverse).
    own_ridge = asym and target_damp is not None and target_damp != damp
    if asym and not own_ridge:
        U, H_inv, damp_used = inverse_hessian_cholesky(H, damp, name, with_inverse=True)
    else:
        U, damp_used = inverse_hessian_cholesky(H, damp, name)
    if asym:
        # In the permuted order W_p D_p is (W D) with its columns permuted.
        WD = WD.detach().float()
        if perm is not None:
            WD = WD[:, perm]
        shift = _ridge_solve(WD, H, target_damp, name) if own_ridge else WD @ H_inv
        if perm is None:
            W = W + alpha * shift
        else:
            W[:, perm] += alpha * shift
        del WD, shift
        if not own_ridge:
            del H_inv
        W[keep_zero] = 0  # pruned and dead weights stay zero
    # The refit needs the target and the column loop's Hessian in the original column order.
    refit_with = (W, H_orig) if refit else None
    del H, H_orig

    scale = torch.empty(rows, n_groups, device=W.device)
    zero = None if args.sym else torch.empty(rows, n_groups, device=W.device)
    # Static groups: scales from the original weights, computed up front (needed for
    # act-order, and the only sensible choice for one group per row).
    static = act_order or n_groups == 1
    if static:
        s, z = group_qparams(W, args, observer)
        scale.copy_(s)
        if zero is not None:
            zero.copy_(z)
    if act_order:
        W, keep_zero = W[:, perm], keep_zero[:, perm]
        col_group = (perm // g).tolist()
    else:
        col_group = [c // g for c in range(cols)]

    if not static:
        # Blocks hold whole groups, so a group's scale comes from its up-to-date weights.
        block_size = max(g, (block_size // g) * g)
    # Work on transposed copies: a weight column is then a contiguous row.
    Wt = W.t().contiguous()
    del W
    Kt = (~keep_zero).t().float().contiguous() if bool(keep_zero.any()) else None
    del keep_zero
    if static:
        # Per-column scales / zeros in processing order, as the loader will see them.
        St = scale.to(scale_dtype).float()[:, col_group].t().contiguous()
        Zt = zero[:, col_group].t().contiguous() if zero is not None else None
    Qt = torch.zeros_like(Wt)
    loss = torch.zeros(rows, device=Wt.device)
    dinv_all = 1.0 / torch.diag(U)
    mode = kernel_mode(Wt.device)
    graph = _block_graph(rows, block_size, zero is not None, Kt is not None, args, Wt.device) \
        if static and mode == "graph" else None

    def columns(W1, U1, dinv, S1, Z1, K1, Q1, E1, j0, j1, later_needed):
        nonlocal mode
        if mode == "triton":
            try:
                _kernel.quantize_columns_triton(W1, U1, dinv, S1, Z1, K1, Q1, E1, j0, j1, args, store_w=later_needed)
                return
            except Exception as exc:  # a GPU or driver Triton cannot compile for: nothing was written yet
                if os.environ.get("LLMCOMPRESS_GPTQ_KERNEL") == "triton":
                    raise
                logger.warning("GPTQ Triton kernel failed (%s); using the torch column loop", exc)
                _kernel.disable()
                mode = "eager"
        quantize_columns(W1, U1, dinv, S1, Z1, K1, Q1, E1, j0, j1, args)

    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        n = i2 - i1
        U1, dinv = U[i1:i2, i1:i2], dinv_all[i1:i2]
        K1 = Kt[i1:i2] if Kt is not None else None
        if graph is not None and n == block_size:
            Q1, E1 = graph(Wt[i1:i2], U1, dinv, St[i1:i2], Zt[i1:i2] if Zt is not None else None, K1)
        else:
            W1 = Wt[i1:i2].clone()
            Q1, E1 = torch.zeros_like(W1), torch.zeros_like(W1)
            if static:
                columns(W1, U1, dinv, St[i1:i2], Zt[i1:i2] if Zt is not None else None, K1, Q1, E1, 0, n, False)
            else:
                S1 = torch.empty_like(W1)
                Z1 = torch.empty_like(W1) if zero is not None else None
                for j in range(0, n, g):
                    grp = (i1 + j) // g
                    s_, z_ = _group_params(W1[j : j + g].t(), args, observer)
                    s_ = s_.to(scale_dtype)
                    scale[:, grp] = s_
                    S1[j : j + g] = s_.float().unsqueeze(0)
                    if Z1 is not None:
                        zero[:, grp] = z_
                        Z1[j : j + g] = z_.unsqueeze(0)
                    columns(W1, U1, dinv, S1, Z1, K1, Q1, E1, j, j + g, j + g < n)
        Qt[i1:i2] = Q1
        loss += E1.pow(2).sum(0) / 2
        Wt[i2:] -= U[i1:i2, i2:].t() @ E1
    Q = Qt.t()
    if perm is not None:
        Q = Q[:, torch.argsort(perm)]
    loss = float(loss.sum())
    if refit_with is not None:
        target, H = refit_with
        lam = damp_used if refit_damp is None else max(refit_damp, damp_used)
        H = add_diagonal(H, lam * torch.mean(torch.diag(H)))
        Q, scale, _, ratio = refit_scales(target, H, Q, scale.to(scale_dtype).float(), g, scale_dtype)
        loss *= ratio  # the loop's own sum of H-weighted errors, scaled by the objective's change
    return GPTQResult(Q.to(dtype), scale.to(scale_dtype), zero, loss, damp_used)
