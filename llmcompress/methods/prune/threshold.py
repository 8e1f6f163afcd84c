"""Exact global magnitude threshold over many tensors, without concatenating them.

Global unstructured pruning keeps the largest ``(1 - sparsity)`` fraction of ``|w|`` over
all targeted layers, so it needs the k-th smallest magnitude of billions of values.
Concatenating and sorting (or ``kthvalue``) needs a copy of every weight, and
``torch.kthvalue`` refuses more than 2^31 elements on CUDA. Instead:

1. sample ``m`` magnitudes uniformly (with a fixed seed) and take a bracket ``[lo, hi]``
   around the sample quantile, wide enough (several binomial standard deviations) to hold
   the true k-th value with overwhelming probability;
2. one streaming pass per tensor counts values below ``lo`` and gathers the few values
   inside the bracket;
3. the exact k-th value is selected among the gathered ones. If the bracket missed (it
   cannot in practice), it is widened and the pass repeated, so the answer is always exact.

On CUDA, fused Triton counting passes (:mod:`.radix`) replace steps 2-3: the gather in step 2
needs a host sync per tensor and several kernels per chunk.

Ties are resolved by position (:func:`prune_masks`), so the sparsity is exact too.
All work happens on the tensors' own device (CPU or GPU), chunk by chunk.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Sequence

import torch

from . import radix

logger = logging.getLogger(__name__)

CHUNK = 1 << 26  # elements per streaming step: bounds temporary memory
METHODS = ("auto", "sample", "count", "radix")


def _gpu_method(tensors):
    """The Triton selection to use, or None for the sampled bracket below.

    ``count`` (sampled bracket + counting passes, :mod:`.radix`) on CUDA when Triton imports;
    the streaming bracket below elsewhere (on CPU it is the faster one).
    ``LLMCOMPRESS_THRESHOLD=sample|count|radix`` overrides; ``count`` and ``radix`` on CPU
    tensors need ``TRITON_INTERPRET=1`` (tests).
    """
    method = os.environ.get("LLMCOMPRESS_THRESHOLD", "auto").lower()
    if method not in METHODS:
        raise ValueError(f"LLMCOMPRESS_THRESHOLD={method!r}: expected one of {', '.join(METHODS)}")
    if method == "auto":
        method = "count" if radix.available() and all(t.is_cuda for t in tensors) else "sample"
    return {"count": radix.bracket_kth_magnitude, "radix": radix.radix_kth_magnitude}.get(method)


def _chunks(t: torch.Tensor):
    flat = t.reshape(-1)
    for i in range(0, flat.numel(), CHUNK):
        yield flat[i : i + CHUNK]


def _scores(c: torch.Tensor, scale: float) -> torch.Tensor:
    a = c.abs()
    # Scaled scores in float32 whatever the weights' dtype: torch rounds a Python scalar
    # differently for bf16 tensors on CPU and CUDA, and the CUDA radix select must agree.
    return a.float().div_(scale) if scale != 1.0 else a


def _sample(tensors: Sequence[torch.Tensor], m: int, gen: torch.Generator, scales=None) -> torch.Tensor:
    sizes = torch.tensor([t.numel() for t in tensors], dtype=torch.float64)
    picks = torch.multinomial(sizes / sizes.sum(), m, replacement=True, generator=gen)
    counts = torch.bincount(picks, minlength=len(tensors))
    parts = []
    for i, (t, c) in enumerate(zip(tensors, counts.tolist())):
        if c:
            idx = torch.randint(0, t.numel(), (c,), generator=gen).to(t.device)
            parts.append(_scores(t.reshape(-1)[idx].float(), scales[i] if scales else 1.0).cpu())
    return torch.cat(parts)


@torch.no_grad()
def global_kth_magnitude(tensors: Sequence[torch.Tensor], k: int, sample: int = 1 << 20, seed: int = 0,
                         scales: Sequence[float] | None = None) -> tuple[float, int, int]:
    """The k-th smallest score (1-based) over all tensors, exactly, and how many scores are below it.

    The score of a weight is ``|w|``, or ``|w| / scales[i]`` for tensor ``i`` when ``scales`` is given
    (scale-normalized global pruning), computed chunk by chunk without copies of the tensors.

    Returns:
        ``(threshold, n_below, n_equal)``: ``n_below < k <= n_below + n_equal``.
    """
    total = sum(t.numel() for t in tensors)
    if not 1 <= k <= total:
        raise ValueError(f"k={k} outside [1, {total}]")
    select = _gpu_method(tensors)
    if select is not None:
        try:
            return select(tensors, k, scales)
        except Exception as exc:  # Triton cannot compile for this GPU: the sampled bracket is exact too
            if os.environ.get("LLMCOMPRESS_THRESHOLD"):
                raise
            logger.warning("Triton threshold selection failed (%s); using the sampled bracket", exc)
            radix.disable()
    gen = torch.Generator().manual_seed(seed)
    s = _sample(tensors, min(sample, total), gen, scales).sort().values
    m = s.numel()
    q = k / total
    half = 6 * math.sqrt(q * (1 - q) * m) + 2  # six binomial standard deviations of the rank
    lo_i, hi_i = int(max(0, q * m - half)), int(min(m - 1, q * m + half))
    lo, hi = s[lo_i].item(), s[hi_i].item()
    if lo_i == 0:
        lo = -1.0  # bracket open below
    if hi_i == m - 1:
        hi = math.inf
    while True:
        below_parts, inside = [], []
        for i, t in enumerate(tensors):
            for c in _chunks(t):
                a = _scores(c, scales[i] if scales else 1.0)
                if lo >= 0:
                    below_parts.append((a < lo).sum())  # stays on device: no sync per chunk
                inside.append(a[(a >= lo) & (a <= hi)].float())
        below = int(sum(b.item() for b in below_parts)) if below_parts else 0
        vals = torch.cat(inside)
        if below < k <= below + vals.numel():
            kth = torch.kthvalue(vals, k - below).values.item()  # the bracket is small: fine on any device
            n_below = below + int((vals < kth).sum())
            n_equal = int((vals == kth).sum())
            return kth, n_below, n_equal
        # The sample was unlucky: widen the bracket on the side that missed and redo the pass.
        if k <= below:
            lo = -1.0
        else:
            hi = math.inf


def _keep_masks(tensors: Sequence[torch.Tensor], sparsity: float, scales, on_chunk) -> None:
    """Find the exact threshold, then call ``on_chunk(i, start, keep)`` for every chunk of every
    tensor with the boolean mask of the values to keep (ties pruned in order until exact)."""
    if not 0 <= sparsity < 1:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    total = sum(t.numel() for t in tensors)
    k = int(round(sparsity * total))
    if k == 0:
        return
    thr, n_below, n_equal = global_kth_magnitude(tensors, k, scales=scales)
    ties_to_prune = k - n_below
    all_ties = ties_to_prune == n_equal  # the usual case: no tie needs keeping, no tie counting
    for i, t in enumerate(tensors):
        scale = scales[i] if scales else 1.0
        flat = t.reshape(-1)
        for start in range(0, flat.numel(), CHUNK):
            a = _scores(flat[start : start + CHUNK], scale)
            if all_ties:
                on_chunk(i, start, a > thr)
                continue
            drop = a <= thr
            eqm = a == thr
            eq = int(eqm.sum())
            if eq > ties_to_prune:
                # prune only the first ``ties_to_prune`` values equal to the threshold
                drop &= ~(eqm & (torch.cumsum(eqm.int(), 0) > ties_to_prune))
            ties_to_prune = max(0, ties_to_prune - eq)
            on_chunk(i, start, ~drop)


@torch.no_grad()
def prune_in_place(tensors: Sequence[torch.Tensor], sparsity: float, scales: Sequence[float] | None = None) -> list[int]:
    """Zero exactly ``round(sparsity * total)`` weights with the smallest scores, in place.

    Scores are ``|w|`` (or ``|w| / scales[i]``). Each mask lives only while its chunk is
    processed. Returns the number of zeroed weights per tensor.
    """
    counts = [0] * len(tensors)

    def zero(i, start, keep):
        # multiplying by the mask is several times faster than masked_fill_ on CPU
        tensors[i].reshape(-1)[start : start + keep.numel()].mul_(keep)
        counts[i] += keep.numel() - int(keep.sum())

    _keep_masks(tensors, sparsity, scales, zero)
    return counts


@torch.no_grad()
def prune_replacing(tensors: list[torch.Tensor], sparsity: float, scales: Sequence[float] | None = None,
                    replace=None) -> None:
    """The selection of :func:`prune_in_place`, each tensor written into a new one.

    On CPU, weights that transformers memory-maps from safetensors are copy-on-write pages:
    writing them in place costs a page copy per 4 KiB, more than the pruning itself (1.07 s
    against 0.59 s for SmolLM2's Linear weights here). Each finished tensor is handed to
    ``replace(i, new)`` and put in ``tensors[i]``, so the caller can drop the old one at once
    (only one extra tensor is alive when the old ones are not memory-mapped).
    """
    current: dict[int, torch.Tensor] = {}  # the tensor being written (chunks arrive in order)

    def write(i, start, keep):
        if start == 0:
            current[i] = torch.empty_like(tensors[i])
        src = tensors[i].reshape(-1)[start : start + keep.numel()]
        torch.mul(src, keep, out=current[i].view(-1)[start : start + keep.numel()])
        if start + keep.numel() == tensors[i].numel():  # last chunk: hand the new tensor over
            tensors[i] = current.pop(i)
            if replace is not None:
                replace(i, tensors[i])

    _keep_masks(tensors, sparsity, scales, write)


@torch.no_grad()
def prune_masks(tensors: Sequence[torch.Tensor], sparsity: float, scales: Sequence[float] | None = None) -> list[torch.Tensor]:
    """Boolean keep-masks of the same selection as :func:`prune_in_place` (tensors untouched)."""
    masks = [torch.ones_like(t, dtype=torch.bool) for t in tensors]

    def store(i, start, keep):
        masks[i].reshape(-1)[start : start + keep.numel()] = keep

    _keep_masks(tensors, sparsity, scales, store)
    return masks
