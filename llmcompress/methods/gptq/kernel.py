"""GPTQ's column loop as one Triton kernel per block (CUDA).

The inner loop of GPTQ (:func:`..gptq.quantize_columns`) rounds one column, then subtracts
that column's scaled error from every later column of the block: a rank-1 update per column.
Written with torch ops it is ~8 tiny kernels per column (128 per block), so on a GPU it is
bound by launches, even replayed as a CUDA graph (see BENCHMARKS.md, GPU checks).

Rows are independent given the inverse-Hessian factor ``U``, so one program owns a tile of
rows for the whole block: it keeps the ``[block, rows_tile]`` weight tile in registers, walks
the columns in order, and reads only ``U``'s row and the column's scales from memory. One
launch per block replaces ~1000.

The arithmetic is the same as the torch loop (IEEE division, round half to even, clamp,
``q * s``, keep-mask, error ``(w - q) * dinv``, update ``w - u e``); the update may be fused
into one FMA, so values can differ from the torch loop in the last bit, as CUDA and CPU
already do.

Set ``TRITON_INTERPRET=1`` before importing to run it on the CPU (tests do).
"""

from __future__ import annotations

import torch

from ...triton_support import Switch, tl, triton

_switch = Switch()
available, disable = _switch.available, _switch.disable  # disable(): the kernel failed here, use torch


if triton is not None:

    @triton.jit
    def _round_half_even(x):
        # torch.round's rule; written out because libdevice.rint has no interpreter (CPU) version.
        # Exact: floor and the fractional part of a float32 are representable.
        f = tl.floor(x)
        d = x - f
        odd = (f - 2.0 * tl.floor(f * 0.5)) != 0.0
        up = (d > 0.5) | ((d == 0.5) & odd)
        return tl.where(up, f + 1.0, f)

    @triton.jit
    def _gptq_block(W, S, Z, K, Q, E, U, D, rows, stride_u, stride_uc, start, end, n, qmin, qmax,
                    BLOCK: tl.constexpr, BR: tl.constexpr, ASYM: tl.constexpr, MASKED: tl.constexpr,
                    STORE_W: tl.constexpr):
        pid = tl.program_id(0)
        r = pid * BR + tl.arange(0, BR)
        rmask = r < rows
        c = tl.arange(0, BLOCK)
        tile = c[:, None] * rows + r[None, :]
        tmask = (c[:, None] < n) & rmask[None, :]
        w = tl.load(W + tile, mask=tmask, other=0.0)
        i = start
        while i < end:  # a while loop: Triton's interpreter cannot range() over a runtime scalar
            # column i of the register tile: a masked reduction (registers cannot be indexed)
            wi = tl.sum(tl.where(c[:, None] == i, w, 0.0), axis=0)
            s = tl.load(S + i * rows + r, mask=rmask, other=1.0)
            q = _round_half_even(tl.math.div_rn(wi, s))
            if ASYM:
                z = tl.load(Z + i * rows + r, mask=rmask, other=0.0)
                q = tl.minimum(tl.maximum(q + z, qmin), qmax) - z
            else:
                q = tl.minimum(tl.maximum(q, qmin), qmax)
            qv = q * s
            if MASKED:
                qv = qv * tl.load(K + i * rows + r, mask=rmask, other=1.0)
            e = (wi - qv) * tl.load(D + i)
            tl.store(Q + i * rows + r, qv, mask=rmask)
            tl.store(E + i * rows + r, e, mask=rmask)
            u = tl.load(U + i * stride_u + c * stride_uc, mask=(c >= i) & (c < n), other=0.0)
            w = w - u[:, None] * e[None, :]
            i += 1
        if STORE_W:
            tl.store(W + tile, w, mask=tmask & (c[:, None] >= end))


def quantize_columns_triton(Wt, U1, dinv, St, Zt, Kt, Qt, Et, start: int, end: int, args, store_w: bool = False) -> None:
    """Same contract as :func:`..gptq.quantize_columns` on one block (all ``[block, rows]``,
    contiguous, float32); ``store_w`` writes the updated later columns back to ``Wt`` (needed
    only when the caller reads them, e.g. to compute the next group's scales)."""
    n, rows = Wt.shape
    block = max(16, triton.next_power_of_2(n))
    br = 32 if block <= 128 else 16  # keeps the register tile at <= 4096 floats per program
    grid = (triton.cdiv(rows, br),)
    dummy = Wt
    _gptq_block[grid](Wt, St, Zt if Zt is not None else dummy, Kt if Kt is not None else dummy, Qt, Et,
                      U1, dinv, rows, U1.stride(0), U1.stride(1), start, end, n, float(args.qmin), float(args.qmax),
                      BLOCK=block, BR=br, ASYM=Zt is not None, MASKED=Kt is not None, STORE_W=store_w)


def check_layout(*tensors: torch.Tensor | None) -> bool:
    """The kernel indexes ``[block, rows]`` tensors as contiguous float32 rows."""
    return all(t is None or (t.dtype == torch.float32 and t.is_contiguous()) for t in tensors)
