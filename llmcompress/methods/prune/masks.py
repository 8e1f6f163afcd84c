"""Which weights to remove, given a score per weight (pure tensor functions, no modules).

Every criterion (magnitude ``|W|``, Wanda ``|W| * ||X_j||``, SparseGPT's ``W^2 / [H^-1]_jj^2``)
produces a score; these functions turn scores into boolean masks (``True`` = remove) with
an exact count. Ties are broken by position (``topk`` on indices), never by ``<=`` on a
threshold, so the sparsity is exact even when many scores are equal (e.g. already zero).
"""

from __future__ import annotations

import torch

from ...errors import ConfigError


def parse_pattern(pattern: str) -> tuple[int, int]:
    """``"2:4"`` -> ``(2, 4)``: keep N weights in every group of M consecutive inputs."""
    try:
        n, m = (int(p) for p in str(pattern).split(":"))
    except ValueError:
        raise ConfigError(f"pattern {pattern!r} is not N:M (for example 2:4 or 4:8)", "pattern") from None
    if not 0 < n < m:
        raise ConfigError(f"pattern {pattern!r}: N (weights kept per group) must be at least 1 and smaller "
                          f"than M (the group size), e.g. 2:4", "pattern")
    return n, m


def _lowest(score: torch.Tensor, k: int, dim: int) -> torch.Tensor:
    mask = torch.zeros_like(score, dtype=torch.bool)
    if k > 0:
        mask.scatter_(dim, torch.topk(score, k, dim=dim, largest=False).indices, True)
    return mask


def row_mask(score: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Remove ``round(sparsity * cols)`` lowest scores in every row (Wanda's comparison group)."""
    return _lowest(score, round(sparsity * score.shape[-1]), dim=-1)


def layer_mask(score: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Remove the ``round(sparsity * numel)`` lowest scores of the whole matrix."""
    return _lowest(score.reshape(-1), round(sparsity * score.numel()), dim=0).view_as(score)


def nm_mask(score: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the ``n`` highest scores in each group of ``m`` consecutive columns of each row."""
    rows, cols = score.shape
    if cols % m:
        raise ValueError(f"{cols} columns are not divisible by the N:M group size {m}")
    grouped = score.reshape(rows, cols // m, m)
    return _lowest(grouped, m - n, dim=-1).view(rows, cols)


def nm_valid(weight: torch.Tensor, n: int, m: int) -> bool:
    """True when every group of ``m`` consecutive inputs holds at most ``n`` nonzeros."""
    rows, cols = weight.shape
    return bool(((weight.reshape(rows, cols // m, m) != 0).sum(-1) <= n).all())
