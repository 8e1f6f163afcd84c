"""Exact k-th smallest magnitude on a GPU (Triton): radix select, and a sampled bracket
refined by counting passes (the default: one pass over the weights in the usual case).

Radix select
------------

For non-negative floats the IEEE bit pattern, read as an integer, orders like the value,
so the k-th smallest score is found digit by digit: one pass per digit builds a histogram
of that digit over the values whose higher digits equal the prefix chosen so far, and the
cumulative histogram says which digit holds the k-th value (the "radix select" of
Alabi et al., "Fast k-selection algorithms for graphics processing units", JEA 2012).

Scores are ``|w|`` (or ``|w| / scale`` in float32, as :func:`.threshold._scores`) as float32 bits: 31 significant bits, digits of 11, 11 and 9 bits. bf16 and fp16 scores have
no set bits below bit 13 of their float32 pattern, so two passes suffice for them: each
reads every weight once, in place, in its own dtype, with one fused kernel per tensor
(no copies, no compaction, no host sync per tensor). For Llama-3-8B's 7B bf16 Linear
weights that is two reads of 14 GB, but ``tl.histogram`` into 2048 bins costs far more than
the reads (0.34 s on an H100, BENCHMARKS.md).

Bracket and count
-----------------
A strided sample of the scores brackets the k-th value (as in :mod:`.threshold`); one pass
then counts, for 16 candidate keys spread over the bracket, how many scores lie below each
(compares and adds in registers, one atomic per candidate per program). The counts say
which pair of adjacent candidates holds the k-th value; when they are neighbouring
representable values the answer is exact, otherwise the pair becomes the next bracket.
A bracket that misses (a bad sample) is widened to everything below or above it, so the
result is always exact. For bf16 weights the sampled bracket spans a few representable
values, so one pass decides.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ...triton_support import Switch, tl, triton

NB = 2048  # bins per pass (11-bit digits)
LEVELS = ((20, 11), (9, 11), (0, 9))  # (shift, width) of each digit of a 31-bit key
BLOCK = 4096
MAX_PROGRAMS = 1024  # grid-stride: enough programs to fill a GPU, few global atomics
SPLIT = 1 << 30  # elements per launch: keeps int32 offsets


_switch = Switch()
available, disable = _switch.available, _switch.disable  # disable(): Triton failed here, use the CPU path


if triton is not None:

    @triton.jit
    def _digit_histogram(X, HIST, numel, scale, prefix, pshift, dshift, dmask,
                         SCALED: tl.constexpr, BLOCK: tl.constexpr, NB: tl.constexpr):
        pid = tl.program_id(0)
        nprog = tl.num_programs(0)
        o = tl.arange(0, BLOCK)
        acc = tl.zeros((NB,), dtype=tl.int32)
        start = pid * BLOCK
        while start < numel:
            offs = start + o
            inb = offs < numel
            x = tl.load(X + offs, mask=inb, other=0.0)
            a = tl.abs(x.to(tl.float32))
            if SCALED:
                a = tl.math.div_rn(a, scale)  # as threshold._scores: float32, IEEE division
            key = a.to(tl.int32, bitcast=True)
            match = inb & ((key >> pshift) == prefix)
            acc += tl.histogram((key >> dshift) & dmask, NB, mask=match)
            start += nprog * BLOCK
        tl.atomic_add(HIST + tl.arange(0, NB), acc.to(tl.int64))


def _per_part(tensors, scales, block: int, launch) -> None:
    """``launch(grid, part, scale)`` for every tensor, in parts of at most SPLIT elements."""
    for i, t in enumerate(tensors):
        flat = t.reshape(-1)
        scale = float(scales[i]) if scales else 1.0
        for s in range(0, flat.numel(), SPLIT):
            part = flat[s : s + SPLIT]
            launch((max(1, min(MAX_PROGRAMS, triton.cdiv(part.numel(), block))),), part, scale)


def _histogram(tensors, scales, prefix: int, pshift: int, dshift: int, width: int, device) -> torch.Tensor:
    hist = torch.zeros(NB, dtype=torch.int64, device=device)
    _per_part(tensors, scales, BLOCK, lambda grid, part, scale: _digit_histogram[grid](
        part, hist, part.numel(), scale, prefix, pshift, dshift, (1 << width) - 1,
        SCALED=scale != 1.0, BLOCK=BLOCK, NB=NB))
    return hist


@torch.no_grad()
def radix_kth_magnitude(tensors: Sequence[torch.Tensor], k: int, scales: Sequence[float] | None = None) -> tuple[float, int, int]:
    """Same contract as :func:`.threshold.global_kth_magnitude`: ``(threshold, n_below, n_equal)``."""
    if triton is None:
        raise RuntimeError("radix select needs Triton (installed with CUDA builds of torch)")
    total = sum(t.numel() for t in tensors)
    if not 1 <= k <= total:
        raise ValueError(f"k={k} outside [1, {total}]")
    device = tensors[0].device
    half = all(t.dtype in (torch.bfloat16, torch.float16) for t in tensors) and not any(
        s != 1.0 for s in (scales or ()))
    levels = LEVELS[:2] if half else LEVELS  # 16-bit scores have no bits below 13 in float32
    prefix, pshift, below = 0, 31, 0
    for dshift, width in levels:
        hist = _histogram(tensors, scales, prefix, pshift, dshift, width, device).cpu()
        cum = torch.cumsum(hist, 0)
        d = int(torch.searchsorted(cum, torch.tensor([k - below]), right=False))  # first bin with cum >= k - below
        below += int(cum[d - 1]) if d > 0 else 0
        prefix, pshift = (prefix << width) | d, dshift
        n_equal = int(hist[d])
    key = prefix << pshift
    thr = torch.tensor([key], dtype=torch.int32).view(torch.float32).item()
    return thr, below, n_equal


NC = 16  # candidate keys per counting pass
CBLOCK = 512
INF_KEY = 0x7F800000


if triton is not None:

    @triton.jit
    def _count_below(X, OUT, CAND, numel, scale, SCALED: tl.constexpr, NC: tl.constexpr, BLOCK: tl.constexpr):
        pid = tl.program_id(0)
        nprog = tl.num_programs(0)
        o = tl.arange(0, BLOCK)
        cand = tl.load(CAND + tl.arange(0, NC))
        # per-lane float counts stay exact: each lane sees far fewer than 2^24 values
        acc = tl.zeros((NC, BLOCK), dtype=tl.float32)
        start = pid * BLOCK
        while start < numel:
            offs = start + o
            x = tl.load(X + offs, mask=offs < numel, other=float("inf"))
            a = tl.abs(x.to(tl.float32))
            if SCALED:
                a = tl.math.div_rn(a, scale)
            acc += (a[None, :] < cand[:, None]).to(tl.float32)
            start += nprog * BLOCK
        tl.atomic_add(OUT + tl.arange(0, NC), tl.sum(acc, axis=1).to(tl.int64))


def _count_pass(tensors, scales, keys: list[int], device) -> list[int]:
    cand = torch.tensor(keys + [keys[-1]] * (NC - len(keys)), dtype=torch.int32).view(torch.float32).to(device)
    out = torch.zeros(NC, dtype=torch.int64, device=device)
    _per_part(tensors, scales, CBLOCK, lambda grid, part, scale: _count_below[grid](
        part, out, cand, part.numel(), scale, SCALED=scale != 1.0, NC=NC, BLOCK=CBLOCK))
    return out.tolist()[: len(keys)]


def _key_step(tensors, scales) -> int:
    """Distance between neighbouring representable scores, in float32 bit patterns."""
    if scales and any(s != 1.0 for s in scales):
        return 1
    if all(t.dtype == torch.bfloat16 for t in tensors):
        return 1 << 16
    if all(t.dtype in (torch.bfloat16, torch.float16) for t in tensors):
        return 1 << 13
    return 1


def _strided_sample(tensors, scales, m: int) -> torch.Tensor:
    from .threshold import _scores

    total = sum(t.numel() for t in tensors)
    stride = max(1, total // m)
    parts = []
    for i, t in enumerate(tensors):
        flat = t.reshape(-1)
        part = flat[stride // 2 :: stride]
        if part.numel():
            parts.append(_scores(part, scales[i] if scales else 1.0).float())
    return torch.cat(parts).sort().values


@torch.no_grad()
def bracket_kth_magnitude(tensors: Sequence[torch.Tensor], k: int, scales: Sequence[float] | None = None,
                          sample: int = 1 << 20) -> tuple[float, int, int]:
    """Same contract as :func:`.threshold.global_kth_magnitude`: ``(threshold, n_below, n_equal)``."""
    if triton is None:
        raise RuntimeError("the counting pass needs Triton (installed with CUDA builds of torch)")
    total = sum(t.numel() for t in tensors)
    if not 1 <= k <= total:
        raise ValueError(f"k={k} outside [1, {total}]")
    device = tensors[0].device
    step = _key_step(tensors, scales)
    s = _strided_sample(tensors, scales, min(sample, total))
    m = s.numel()
    q = k / total
    half = 6 * (q * (1 - q) * m) ** 0.5 + 2  # six binomial standard deviations of the rank
    lo_i, hi_i = int(max(0, q * m - half)), int(min(m - 1, q * m + half))
    lo_key, hi_key = s[[lo_i, hi_i]].view(torch.int32).tolist()
    # [L, R): keys known (or guessed) to hold the k-th score: count(< L) < k <= count(< R)
    L = 0 if lo_i == 0 else lo_key // step * step
    R = INF_KEY if hi_i == m - 1 else min(INF_KEY, (hi_key // step + 1) * step)
    while True:
        n_int = max(1, (R - L) // step)
        if n_int <= NC - 1:
            keys = [L + j * step for j in range(n_int)] + [R]
        else:
            d = -(-n_int // (NC - 1)) * step
            keys = [L + j * d for j in range(NC - 1) if L + j * d < R] + [R]
        counts = _count_pass(tensors, scales, keys, device)
        if counts[0] >= k and L > 0:  # the bracket missed below: everything under L
            L, R = 0, L
            continue
        if counts[-1] < k and R < INF_KEY:  # missed above
            L, R = R, INF_KEY
            continue
        j = next(i for i in range(len(keys) - 1) if counts[i] < k <= counts[i + 1]) if counts[0] < k else 0
        if keys[j + 1] - keys[j] <= step:
            thr = torch.tensor([keys[j]], dtype=torch.int32).view(torch.float32).item()
            return thr, counts[j], counts[j + 1] - counts[j]
        L, R = keys[j], keys[j + 1]
