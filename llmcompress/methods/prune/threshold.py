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

CHUNK = 1 << 22  # elements per streaming step: bounds temporary memory (reused scratch buffers)
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
        yield i, flat[i : i + CHUNK]


def _scores(c: torch.Tensor, scale: float) -> torch.Tensor:
    a = c.abs()
    # Scaled scores in float32 whatever the weights' dtype: torch rounds a Python scalar
    # differently for bf16 tensors on CPU and CUDA, and the CUDA radix select must agree.
    return a.float().div_(scale) if scale != 1.0 else a


class _Scratch:
    """Chunk-sized buffers reused across chunks and tensors.

    On CPU, every fresh temporary above malloc's mmap threshold is a new mapping whose pages
    fault in on first write; reusing a few buffers made the streaming passes ~2x faster on
    SmolLM2-135M's Linear weights (``scripts/bench_prune.py``'s threshold timing)."""

    def __init__(self):
        self.bufs: dict = {}

    def get(self, slot: str, like: torch.Tensor, n: int, dtype: torch.dtype) -> torch.Tensor:
        key = (slot, like.device, dtype)
        buf = self.bufs.get(key)
        if buf is None or buf.numel() < n:
            buf = self.bufs[key] = torch.empty(max(n, min(CHUNK, 1 << 20)), device=like.device, dtype=dtype)
        return buf[:n]

    def scores(self, c: torch.Tensor, scale: float) -> torch.Tensor:
        """:func:`_scores` of chunk ``c``, written into a scratch buffer (bitwise the same values)."""
        a = self.get("abs", c, c.numel(), c.dtype)
        torch.abs(c, out=a)
        if scale == 1.0:
            return a
        f = a if a.dtype == torch.float32 else self.get("f32", c, c.numel(), torch.float32).copy_(a)
        return f.div_(scale)

    def mask(self, slot: str, like: torch.Tensor) -> torch.Tensor:
        return self.get(slot, like, like.numel(), torch.bool)


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


def _select(tensors: Sequence[torch.Tensor], k: int, sample: int, seed: int, scales):
    """The sampled bracket (module docstring): ``(threshold, n_below, n_equal, per-tensor counts
    of scores <= threshold and == threshold)``."""
    total = sum(t.numel() for t in tensors)
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
    scratch = _Scratch()
    while True:
        below_parts, inside = [], []  # per tensor
        for i, t in enumerate(tensors):
            below_i, inside_i = [], []
            for _, c in _chunks(t):
                a = scratch.scores(c, scales[i] if scales else 1.0)
                inside_mask = torch.le(a, hi, out=scratch.mask("m2", a))
                if lo >= 0:
                    below_mask = torch.lt(a, lo, out=scratch.mask("m1", a))
                    # counted as bytes into int32 (a chunk is < 2^31): ~2x faster than a bool sum on CPU;
                    # the count stays on device (no sync per chunk)
                    below_i.append(below_mask.view(torch.uint8).sum(dtype=torch.int32))
                    inside_mask.logical_xor_(below_mask)  # a <= hi and not a < lo (a < lo implies a <= hi)
                inside_i.append(a[inside_mask].float())
            below_parts.append(below_i)
            inside.append(torch.cat(inside_i) if inside_i else torch.empty(0, device=t.device))
        below_each = [int(sum(b.item() for b in parts)) for parts in below_parts]
        below = sum(below_each)
        vals = torch.cat(inside)
        if below < k <= below + vals.numel():
            kth = torch.kthvalue(vals, k - below).values.item()  # the bracket is small: fine on any device
            n_below = below + int((vals < kth).sum())
            n_equal = int((vals == kth).sum())
            # per tensor: (scores <= kth, scores == kth), for the fused masking pass
            counts = [(b + int((v <= kth).sum()), int((v == kth).sum())) for b, v in zip(below_each, inside)]
            return kth, n_below, n_equal, counts
        # The sample was unlucky: widen the bracket on the side that missed and redo the pass.
        if k <= below:
            lo = -1.0
        else:
            hi = math.inf


@torch.no_grad()
def global_kth_magnitude(tensors: Sequence[torch.Tensor], k: int, sample: int = 1 << 18, seed: int = 0,
                         scales: Sequence[float] | None = None) -> tuple[float, int, int]:
    """The k-th smallest score (1-based) over all tensors, exactly, and how many scores are below it.

    The score of a weight is ``|w|``, or ``|w| / scales[i]`` for tensor ``i`` when ``scales`` is given
    (scale-normalized global pruning), computed chunk by chunk without copies of the tensors.

    Returns:
        ``(threshold, n_below, n_equal)``: ``n_below < k <= n_below + n_equal``.
    """
    return _kth(tensors, k, sample, seed, scales)[:3]


def _kth(tensors, k, sample=1 << 18, seed=0, scales=None):
    """:func:`global_kth_magnitude` plus, when the sampled bracket ran, the per-tensor counts of
    scores at or below and equal to the threshold (None from the GPU selections)."""
    total = sum(t.numel() for t in tensors)
    if not 1 <= k <= total:
        raise ValueError(f"k={k} outside [1, {total}]")
    select = _gpu_method(tensors)
    if select is not None:
        try:
            return (*select(tensors, k, scales), None)
        except Exception as exc:  # Triton cannot compile for this GPU: the sampled bracket is exact too
            if os.environ.get("LLMCOMPRESS_THRESHOLD"):
                raise
            logger.warning("Triton threshold selection failed (%s); using the sampled bracket", exc)
            radix.disable()
    return _select(tensors, k, sample, seed, scales)


def _keep_masks(tensors: Sequence[torch.Tensor], sparsity: float, scales, on_chunk, on_tensor=None) -> None:
    """Find the exact threshold, then call ``on_chunk(i, start, keep)`` for every chunk of every
    tensor with the boolean mask of the values to keep (ties pruned in order until exact).

    ``on_tensor(i, lambd, n_pruned or None)``, if given, replaces the chunk calls for plain magnitudes
    (no ``scales``) wherever a whole tensor is cut at one value: the caller zeroes ``|w| <= lambd``
    in one fused pass (``torch.hardshrink``) and no mask is built. ``lambd`` is the threshold
    when all of the tensor's ties are pruned, or the value just below it when none are; only the
    tensor where the ties to prune run out goes through ``on_chunk``. (Checkpoints stored in bf16
    have few distinct magnitudes: SmolLM2-135M's threshold value is shared by thousands of weights.)
    """
    if not 0 <= sparsity < 1:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    total = sum(t.numel() for t in tensors)
    k = int(round(sparsity * total))
    if k == 0:
        return
    thr, n_below, n_equal, counts = _kth(tensors, k, scales=scales)
    ties_to_prune = k - n_below
    all_ties = ties_to_prune == n_equal  # the usual case: no tie needs keeping, no tie counting
    fused = on_tensor is not None and not scales
    scratch = _Scratch()
    for i, t in enumerate(tensors):
        if fused and counts is None and all_ties:  # GPU selections (no per-tensor counts): cut at the threshold
            on_tensor(i, thr, None)
            continue
        if fused and counts is not None:
            at_most, equal = counts[i]
            if equal <= ties_to_prune:  # every tie here is pruned
                on_tensor(i, thr, at_most)
                ties_to_prune -= equal
                continue
            if ties_to_prune == 0:  # none is: cut just below the threshold, in the weights' dtype
                below = torch.nextafter(torch.tensor(thr, dtype=t.dtype), torch.tensor(0.0, dtype=t.dtype)).item()
                on_tensor(i, below, at_most - equal)
                continue
        scale = scales[i] if scales else 1.0
        for start, c in _chunks(t):
            a = scratch.scores(c, scale)
            if all_ties:
                on_chunk(i, start, torch.gt(a, thr, out=scratch.mask("keep", a)))
                continue
            drop = torch.le(a, thr, out=scratch.mask("drop", a))
            eqm = torch.eq(a, thr, out=scratch.mask("eq", a))
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

    def shrink(i, lambd, n):
        for _, c in _chunks(tensors[i]):
            torch.hardshrink(c, lambd, out=c)  # |w| <= lambd -> 0, one fused pass, no mask
        counts[i] = n if n is not None else int((tensors[i] == 0).sum())

    _keep_masks(tensors, sparsity, scales, zero, shrink)
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

    def finish(i, new):
        tensors[i] = new
        if replace is not None:
            replace(i, new)

    def write(i, start, keep):
        if start == 0:
            current[i] = torch.empty_like(tensors[i])
        src = tensors[i].reshape(-1)[start : start + keep.numel()]
        torch.mul(src, keep, out=current[i].view(-1)[start : start + keep.numel()])
        if start + keep.numel() == tensors[i].numel():  # last chunk: hand the new tensor over
            finish(i, current.pop(i))

    def shrink(i, lambd, n):
        finish(i, torch.hardshrink(tensors[i], lambd))  # |w| <= lambd -> 0 into a new tensor, one fused pass

    _keep_masks(tensors, sparsity, scales, write, shrink)


@torch.no_grad()
def prune_masks(tensors: Sequence[torch.Tensor], sparsity: float, scales: Sequence[float] | None = None) -> list[torch.Tensor]:
    """Boolean keep-masks of the same selection as :func:`prune_in_place` (tensors untouched)."""
    masks = [torch.ones_like(t, dtype=torch.bool) for t in tensors]

    def store(i, start, keep):
        masks[i].reshape(-1)[start : start + keep.numel()] = keep

    _keep_masks(tensors, sparsity, scales, store)
    return masks
