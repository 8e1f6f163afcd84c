"""GPTQ's calibration statistics: the Hessian ``H = 2/n sum x x^T`` of a layer's squared output error, and
GPTAQ's input-error statistic ``D = 2/n sum (ref - x) x^T`` (or its projection ``W D``).

Frantar et al., "GPTQ", ICLR 2023 (arXiv:2210.17323); Li et al., "GPTAQ", ICML 2025. Pure tensor code,
shared by GPTQ and SparseGPT (the same ``H``) and Wanda (:func:`first_positions`).
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch


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


# Rows per block of the symmetric product on CPU: ten blocks for Qwen2.5's 4864-wide down_proj,
# three for SmolLM2's 1536, two for 896-wide inputs, one for 576. Timed with torch.mm on a 2-core
# AMX CPU, 4096 tokens a batch (2026-12-08): against 1664 (three blocks at 4864, one below 2496)
# 150 ms against 180-200 ms at 4864, 12-13 ms against 19-20 ms at 1536, 5.4 ms against 7 ms at 896;
# on that CPU every entry of H came out bit for bit the same as with 1664 (checked at all four widths).
GRAM_BLOCK = 512

# Rows per chunk of :func:`transposed`.
TRANSPOSE_CHUNK = 128


def transposed(x: torch.Tensor) -> torch.Tensor:
    """``x.t().contiguous()`` for a 2-D tensor, on CPU copied in chunks of rows.

    torch's one-shot transposing copy of these shapes is slow on CPU (as long as the Gram product
    it feeds, for a 1536-wide input); copied a chunk of rows at a time it is not. On a 2-core CPU a [4096, 1536] bf16 input took 4 ms against
    7-15 ms, [4096, 4864] 23 ms against 34 ms, a [9728, 896] float32 weight 18 ms against 24 ms.
    """
    if x.device.type != "cpu":  # the GPU's transposing copy is one fast kernel; chunks would be many
        return x.t().contiguous()
    n = x.shape[0]
    out = torch.empty(x.shape[1], n, dtype=x.dtype, device=x.device)
    for i in range(0, n, TRANSPOSE_CHUNK):
        out[:, i : i + TRANSPOSE_CHUNK].copy_(x[i : i + TRANSPOSE_CHUNK].t())
    return out


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
        xt = transposed(x)
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
