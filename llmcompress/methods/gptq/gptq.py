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
the target ``W*`` in place of ``W`` and the same ``H`` (:func:`~.linalg.asymmetric_target`). (The paper folds
the shift into the column loop instead; moving it up front keeps one column loop and kernel.) ``alpha`` blends the
two objectives (``W + alpha W D H^-1``), as the paper's alpha does.

After the column loop, :func:`~.refit.refit_scales` solves for each row's group scales given its codes
(the scale half of alternating between codes and scales; GPTQ itself fixes the scales first).

The statistics (``H``, ``D``) accumulate in :mod:`.hessian`, the dampened factorizations and GPTAQ's
target are in :mod:`.linalg`, the scale refit in :mod:`.refit`; this module holds the column loop.

Rows are independent given ``H``: weights that read the same input (q/k/v, gate/up) are
quantized in one call by stacking their rows, which gives the same result as separate
calls and cuts the per-column Python overhead.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch

from ..quant.grid import QuantArgs, group_qparams, mse_shrink, qparams
from . import kernel as _kernel
from .hessian import transposed
from .linalg import ridge_solve, add_diagonal, inverse_hessian_cholesky
from .refit import refit_scales


logger = logging.getLogger(__name__)


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
        D: GPTAQ's input-error statistic from :func:`~.hessian.accumulate_hessian_pair`; with ``alpha``
            > 0 the target becomes :func:`~.linalg.asymmetric_target` (grids are fitted to it).
        alpha: GPTAQ's blend (0: plain GPTQ).
        WD: instead of ``D``, the product ``W D`` (:func:`accumulate_gptaq`'s ``P``).
        target_damp: dampening of the shifted target's solve ``(H + lambda_t I)^-1`` (a ridge
            on the least-squares fit), if it should differ from ``damp`` (the column loop's).
        refit: after the column loop, refit each row's group scales to the objective with the
            codes fixed (:func:`~.refit.refit_scales`).
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
        H = H[perm[:, None], perm]  # one gather (80 ms against 100 ms for two at width 4864)
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
            WD = WD.index_select(1, perm)
        shift = ridge_solve(WD, H, target_damp, name) if own_ridge else WD @ H_inv
        if perm is None:
            W = W + alpha * shift
        else:
            W.index_add_(1, perm, alpha * shift)
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
        W, keep_zero = W.index_select(1, perm), keep_zero.index_select(1, perm)
        col_group = (perm // g).tolist()
    else:
        col_group = [c // g for c in range(cols)]

    if not static:
        # Blocks hold whole groups, so a group's scale comes from its up-to-date weights.
        block_size = max(g, (block_size // g) * g)
    # Work on transposed copies: a weight column is then a contiguous row.
    Wt = transposed(W)
    del W
    Kt = transposed((~keep_zero).float()) if bool(keep_zero.any()) else None
    del keep_zero
    if static:
        # Per-column scales / zeros in processing order, as the loader will see them.
        # (rows of the small transposed [groups, rows] tables, gathered: no full-size transpose)
        index = torch.tensor(col_group, device=scale.device)
        St = scale.to(scale_dtype).float().t().contiguous()[index]
        Zt = zero.t().contiguous()[index] if zero is not None else None
    # Every row of Qt and of each block's E1 is written by the column loop (eager, Triton or graph).
    Qt = torch.empty_like(Wt)
    E = torch.empty(min(block_size, cols), rows, device=Wt.device)
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
            # The loop updates the block's own columns in place; nothing reads them afterwards.
            W1, Q1, E1 = Wt[i1:i2], Qt[i1:i2], E[:n]
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
        if Q1.data_ptr() != Qt[i1:i2].data_ptr():  # the CUDA graph's own output buffer
            Qt[i1:i2] = Q1
        loss += E1.pow(2).sum(0) / 2
        Wt[i2:] -= U[i1:i2, i2:].t() @ E1
    Q = transposed(Qt.index_select(0, torch.argsort(perm)) if perm is not None else Qt)
    loss = float(loss.sum())
    if refit_with is not None:
        target, H = refit_with
        lam = damp_used if refit_damp is None else max(refit_damp, damp_used)
        H = add_diagonal(H, lam * torch.mean(torch.diag(H)))
        Q, scale, _, ratio = refit_scales(target, H, Q, scale.to(scale_dtype).float(), g, scale_dtype)
        loss *= ratio  # the loop's own sum of H-weighted errors, scaled by the objective's change
    return GPTQResult(Q.to(dtype), scale.to(scale_dtype), zero, loss, damp_used)
