"""Integer quantization grids: scales, zero points, quantize / dequantize. Pure tensor code.

Conventions follow compressed-tensors (what vLLM and transformers load): integers are
signed, ``q in [-2^(b-1), 2^(b-1) - 1]``; symmetric scales are ``absmax / ((qmax - qmin) / 2)``
with no zero point; asymmetric grids keep a signed integer zero point ``z`` in
``[qmin + 1, qmax]`` (what the GPTQ v1 format can store) and dequantize as ``(q - z) * scale``.
Groups run along the input dimension (columns).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class QuantArgs:
    """How one weight is quantized.

    Attributes:
        bits: integer width, 2..8.
        group_size: columns sharing one scale; -1 for one scale per output channel.
        sym: symmetric grid (no zero point).
    """

    bits: int = 4
    group_size: int = 128
    sym: bool = True

    @property
    def qmin(self) -> int:
        return -(1 << (self.bits - 1))

    @property
    def qmax(self) -> int:
        return (1 << (self.bits - 1)) - 1

    def group_of(self, cols: int) -> int:
        """Columns per group for a weight with ``cols`` input features."""
        return cols if self.group_size == -1 else self.group_size

    def fits(self, cols: int) -> bool:
        return self.group_size == -1 or cols % self.group_size == 0


def qparams(w: torch.Tensor, args: QuantArgs, shrink: float | torch.Tensor = 1.0):
    """Scale and zero point for each row of ``w`` (``[..., cols]``: one group per row).

    Args:
        w: the weights of the group(s), groups along the last dimension.
        args: grid.
        shrink: clip the range to ``shrink`` times min/max (MSE clipping search).

    Returns:
        ``(scale, zero)`` with shape ``[..., 1]``; ``zero`` is None for symmetric grids.
    """
    return qparams_from_range(*value_range(w, args), args, shrink)


def value_range(w: torch.Tensor, args: QuantArgs) -> tuple[torch.Tensor | None, torch.Tensor]:
    """``(lo, hi)`` of each row that :func:`qparams_from_range` spreads the grid over: ``(None, max |w|)``
    for symmetric grids, ``(min(w, 0), max(w, 0))`` for asymmetric ones (shapes ``[..., 1]``)."""
    w = w.float()
    if args.sym:
        return None, w.abs().amax(dim=-1, keepdim=True)
    return w.amin(dim=-1, keepdim=True).clamp(max=0), w.amax(dim=-1, keepdim=True).clamp(min=0)


def qparams_from_range(lo: torch.Tensor | None, hi: torch.Tensor, args: QuantArgs,
                       shrink: float | torch.Tensor = 1.0):
    """:func:`qparams` from the rows' :func:`value_range` (the MSE search computes it once for
    all its candidate shrink factors)."""
    if args.sym:
        absmax = hi * shrink
        scale = absmax / ((args.qmax - args.qmin) / 2)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        return scale, None
    lo = lo * shrink
    hi = hi * shrink
    scale = (hi - lo) / (args.qmax - args.qmin)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zero = torch.round(args.qmin - lo / scale)
    # The GPTQ v1 format stores ``zero - 1`` unsigned, so the lowest zero point (qmin) cannot be
    # written (loaders read it back as 2^bits - 1). Groups that would need it (min >= -scale/2:
    # all weights about >= 0) spread [0, hi] over one step less and keep one level below zero.
    # No ``if low.any()``: qparams runs per group inside GPTQ's column loop, where a host sync costs.
    low = zero < args.qmin + 1
    narrow = hi / (args.qmax - args.qmin - 1)
    scale = torch.where(low & (narrow > 0), narrow, scale)
    return scale, zero.clamp(args.qmin + 1, args.qmax)


def quantize(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, args: QuantArgs) -> torch.Tensor:
    """Integers (as float) on the grid; shapes broadcast."""
    q = torch.round(w.float() / scale)
    if zero is not None:
        q = q + zero
    return q.clamp(args.qmin, args.qmax)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, dtype=None) -> torch.Tensor:
    """``(q - zero) * scale`` rounded once to ``dtype`` (default: scale's).

    The product of a code (at most 8 bits) and a float16/bfloat16/float32 scale is exact in
    float32, so this equals compressed-tensors' product in the scale dtype whenever the
    scale is stored in the weight dtype, and stays one rounding when it is not.
    """
    dtype = dtype or scale.dtype
    q = q.float()
    if zero is not None:
        q = q - zero.float()
    return (q * scale.float()).to(dtype)


# mse_shrink on CPU works through this many elements at a time: 21 candidate grids times ~8
# elementwise passes then stay in cache instead of streaming the whole weight from memory each
# time (2.4-3.9x faster on Qwen2.5-Coder-0.5B's layer shapes, same result: rows are independent).
MSE_CHUNK = 1 << 18


def mse_shrink(w: torch.Tensor, args: QuantArgs, grid: int = 20, max_shrink: float = 0.2, norm: float = 2.4):
    """Per-row clipping factor that minimises ``sum |w - dq(q(w))|^norm`` (GPTQ/llm-compressor's
    MSE observer): tries ``1, 1 - max_shrink/grid, ..., 1 - max_shrink`` and keeps the best."""
    step = max(1, MSE_CHUNK // max(1, w[0].numel())) if w.dim() > 1 else len(w)
    if w.device.type != "cpu" or step >= len(w):
        return _mse_shrink(w, args, grid, max_shrink, norm)
    return torch.cat([_mse_shrink(w[i : i + step], args, grid, max_shrink, norm) for i in range(0, len(w), step)])


def _mse_shrink(w: torch.Tensor, args: QuantArgs, grid: int, max_shrink: float, norm: float):
    # The range once for every candidate, and each candidate's error in one reused buffer: the
    # same arithmetic as quantize() / dequantize() (so the same choice), with fewer passes over w.
    w = w.float()
    lo, hi = value_range(w, args)
    best_err = torch.full(w.shape[:-1] + (1,), float("inf"), device=w.device)
    best = torch.ones_like(best_err)
    err = torch.empty_like(w)
    for i in range(grid + 1):
        p = 1 - max_shrink * i / grid
        scale, zero = qparams_from_range(lo, hi, args, p)
        torch.div(w, scale, out=err).round_()
        if zero is not None:
            err.add_(zero).clamp_(args.qmin, args.qmax).sub_(zero)
        else:
            err.clamp_(args.qmin, args.qmax)
        total = err.mul_(scale).sub_(w).abs_().pow_(norm).sum(dim=-1, keepdim=True)
        better = total < best_err
        best_err = torch.where(better, total, best_err)
        best = torch.where(better, torch.full_like(best, p), best)
    return best


def group_qparams(w: torch.Tensor, args: QuantArgs, observer: str = "minmax"):
    """Scales / zeros for a whole ``[rows, cols]`` weight: shapes ``[rows, n_groups]``."""
    rows, cols = w.shape
    g = args.group_of(cols)
    wg = w.float().reshape(rows, cols // g, g)
    shrink = mse_shrink(wg, args) if observer == "mse" else 1.0
    scale, zero = qparams(wg, args, shrink)
    return scale.squeeze(-1), (zero.squeeze(-1) if zero is not None else None)


def expand_groups(t: torch.Tensor, g: int) -> torch.Tensor:
    """``[rows, n_groups]`` -> ``[rows, n_groups * g]`` (each group's value repeated)."""
    return t.repeat_interleave(g, dim=1)


def fake_quantize(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, args: QuantArgs,
                  dtype=None) -> torch.Tensor:
    """Quantize then dequantize a whole weight with group parameters ``[rows, n_groups]``."""
    g = args.group_of(w.shape[1])
    s = expand_groups(scale, g)
    z = expand_groups(zero, g) if zero is not None else None
    return dequantize(quantize(w, s, z, args), s, z, dtype)


def integers(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, args: QuantArgs) -> torch.Tensor:
    """The int8 codes of an already quantized (dequantized-in-place) weight."""
    g = args.group_of(w.shape[1])
    s = expand_groups(scale.float(), g)
    z = expand_groups(zero, g) if zero is not None else None
    return quantize(w, s, z, args).to(torch.int8)
