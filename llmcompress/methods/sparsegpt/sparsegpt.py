"""SparseGPT: the algorithm as pure tensor functions (no modules, no I/O).

Frantar, Alistarh. "SparseGPT: Massive Language Models Can Be Accurately Pruned in
One-Shot", ICML 2023 (arXiv:2301.00774).

Like GPTQ (and sharing its Hessian code), SparseGPT walks the columns of ``W`` once; each
removed weight's error is spread over the columns not yet visited through the inverse
Hessian ``H^-1`` of the layer's squared output error, so ``||W X - W' X||`` stays small
(the "optimal brain surgeon" update, made cheap by the column order). Which weights go is
decided block by block (adaptive mask selection): within a block of columns the weights
with the lowest ``w^2 / [U]_jj^2`` (``U`` the Cholesky factor of ``H^-1``) are removed, or
the ``M - N`` lowest of every N:M group.

Asymmetric calibration (optional, ``D`` and ``alpha``): GPTAQ (Li et al., ICML 2025) fits each
quantized layer to the full-precision model's outputs rather than to its own inputs' image; its
objective ``||W X - W' X~||`` becomes SparseGPT's with the target ``W + alpha W D H^-1`` in place of
``W`` (:func:`~llmcompress.methods.gptq.linalg.asymmetric_target`; computed here from the same inverse
as the column loop), so the same shift applies to
pruning: the mask is then chosen on, and the reconstruction spread over, that target.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..gptq.linalg import inverse_hessian_cholesky


@dataclass
class SparseGPTResult:
    weight: torch.Tensor  # [rows, cols], pruned and updated, zeros exact
    loss: float           # sum of the H-weighted errors of the removed weights
    damp: float


def _block_quota(total_k: int, numel: int, start: int, end: int) -> int:
    """Removals for elements ``start..end`` of ``numel`` so that the quotas add up to ``total_k``."""
    return round(total_k * end / numel) - round(total_k * start / numel)


@torch.no_grad()
def sparsegpt_prune(
    W: torch.Tensor,
    H: torch.Tensor,
    *,
    sparsity: float = 0.5,
    nm: tuple[int, int] | None = None,
    row_splits: list[int] | None = None,
    block_size: int = 128,
    damp: float = 0.01,
    name: str = "",
    D: torch.Tensor | None = None,
    alpha: float = 0.0,
) -> SparseGPTResult:
    """Prune one weight matrix (or a stack of matrices sharing ``H``) with SparseGPT.

    Args:
        W: ``[rows, cols]`` weights (work in float32; returned in ``W.dtype``).
        H: ``[cols, cols]`` Hessian (``accumulate_hessian``).
        sparsity: fraction removed, exactly, from each matrix of the stack (ignored with ``nm``).
        nm: ``(N, M)``: keep N of every M consecutive inputs in each row.
        row_splits: row counts of the stacked matrices (default: one matrix); masks are chosen
            per matrix, so stacking gives the same result as separate calls.
        block_size: columns per mask-selection and lazy-update block (a multiple of M).
        damp: dampening as a fraction of the mean Hessian diagonal (raised if Cholesky fails).
        name: layer name for error messages.
        D: ``(X - X~) X~^T`` from :func:`~llmcompress.methods.gptq.hessian.accumulate_hessian_pair`
            (``X`` the full-precision model's inputs); with ``alpha`` > 0 the target weights are
            shifted as in GPTAQ (module docstring).
        alpha: blend of the asymmetric target, 0 (plain SparseGPT) .. 1.
    """
    dtype = W.dtype
    W = W.detach().float().clone()
    H = H.detach().float().clone()
    rows, cols = W.shape
    splits = row_splits or [rows]
    if nm is not None:
        block_size = max(nm[1], block_size // nm[1] * nm[1])
    dead = torch.diag(H) == 0
    asym = D is not None and alpha > 0
    # W D before dead columns are zeroed: the target reproduces W ref (see gptq_quantize)
    WD = W @ D.detach().float() if asym else None
    H[dead, dead] = 1
    W[:, dead] = 0
    if asym:  # one factorization for the shifted target and the column loop
        U, H_inv, damp_used = inverse_hessian_cholesky(H, damp, name, with_inverse=True)
        W = W + alpha * (WD @ H_inv)
        W[:, dead] = 0
        del H_inv, WD
    else:
        U, damp_used = inverse_hessian_cholesky(H, damp, name)
    del H
    d = torch.diag(U)
    quota = [round(sparsity * r * cols) for r in splits]
    Wt = W.t().contiguous()  # a weight column is a contiguous row here
    del W
    loss = torch.zeros((), device=Wt.device)
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        W1 = Wt[i1:i2].clone()
        U1, d1 = U[i1:i2, i1:i2], d[i1:i2]
        E1 = torch.zeros_like(W1)
        remove = torch.zeros_like(W1, dtype=torch.bool)
        if nm is None:
            score = W1.pow(2) / d1.pow(2).unsqueeze(1)
            r0 = 0
            for r, k in zip(splits, quota):
                k_b = _block_quota(k, r * cols, r * i1, r * i2)
                seg = score[:, r0 : r0 + r].reshape(-1)
                if k_b > 0:
                    picked = torch.zeros_like(seg, dtype=torch.bool)
                    picked[torch.topk(seg, k_b, largest=False).indices] = True
                    remove[:, r0 : r0 + r] = picked.view(i2 - i1, r)
                r0 += r
        n, m = nm if nm is not None else (0, 0)
        for i in range(i2 - i1):
            if nm is not None and i % m == 0:
                score = W1[i : i + m].pow(2) / d1[i : i + m].pow(2).unsqueeze(1)  # [m, rows]
                idx = torch.topk(score, m - n, dim=0, largest=False).indices
                remove[i : i + m].scatter_(0, idx, True)
            w = W1[i]
            q = w.masked_fill(remove[i], 0)
            err = (w - q) / d1[i]
            loss += err.pow(2).sum() / 2
            W1[i:].addr_(U1[i, i:], err, alpha=-1)
            W1[i] = q
            E1[i] = err
        Wt[i1:i2] = W1
        Wt[i2:] -= U[i1:i2, i2:].t() @ E1
    return SparseGPTResult(Wt.t().to(dtype).contiguous(), float(loss), damp_used)
