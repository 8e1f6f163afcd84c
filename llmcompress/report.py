"""Before/after report: a Markdown table, a JSON file and a PNG chart."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from .evaluate import Measurement

logger = logging.getLogger(__name__)

# Rows whose after/before ratio means something.
RATIO_ROWS = {"perplexity", "parameters", "size_on_disk_mb", "memory_footprint_mb", "prefill_ms", "decode_tokens_per_s"}
ROWS = (
    ("perplexity", "perplexity", "{:.2f}"),
    ("eval_tokens", "eval tokens", "{:d}"),
    ("parameters", "parameters", "{:,}"),
    ("zero_fraction", "zero weights (Linear)", "{:.1%}"),
    ("size_on_disk_mb", "size on disk (MB)", "{:.1f}"),
    ("memory_footprint_mb", "memory footprint (MB)", "{:.1f}"),
    ("prefill_ms", "prefill latency (ms)", "{:.1f}"),
    ("decode_tokens_per_s", "decode (tokens/s)", "{:.1f}"),
)


def _fmt(value, fmt: str) -> str:
    if value is None:
        return "-"
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def markdown(columns: list[Measurement], title: str | None = None) -> str:
    """One table, a column per measurement, a ratio column when there are exactly two."""
    ratio = len(columns) == 2
    head = "| metric | " + " | ".join(c.label for c in columns) + (" | after / before |" if ratio else " |")
    sep = "|---" * (len(columns) + 1 + ratio) + "|"
    lines = ([f"### {title}", ""] if title else []) + [head, sep]
    for key, name, fmt in ROWS:
        values = [getattr(c, key) for c in columns]
        if all(v is None for v in values):
            continue
        row = f"| {name} | " + " | ".join(_fmt(v, fmt) for v in values)
        if ratio:
            a, b = values
            ok = key in RATIO_ROWS and isinstance(a, (int, float)) and isinstance(b, (int, float)) and a
            row += " | " + (f"{b / a:.3f}" if ok else "-")
        lines.append(row + " |")
    devices = sorted({c.device for c in columns if c.device})
    sources = sorted({c.eval_source for c in columns if c.eval_source})
    lines.append("")
    if sources:
        lines.append(f"Perplexity on {', '.join(sources)} (non-overlapping windows). ")
    if devices:
        lines.append(f"Latency measured on: {'; '.join(devices)}.")
    return "\n".join(lines) + "\n"


def chart(columns: list[Measurement], path: str | Path) -> Path | None:
    """Bar charts of perplexity, size and memory, one bar per measurement."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(k, n) for k, n, _ in ROWS if k in ("perplexity", "size_on_disk_mb", "memory_footprint_mb", "prefill_ms")
              and any(getattr(c, k) is not None for c in columns)]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.2))
    axes = [axes] if len(panels) == 1 else list(axes)
    for ax, (key, name) in zip(axes, panels):
        labels = [c.label for c in columns]
        values = [getattr(c, key) or 0 for c in columns]
        bars = ax.bar(labels, values, color=["#888888", "#2a7ab0", "#d9822b", "#3c9d5d"][: len(values)])
        ax.bar_label(bars, fmt="%.1f", fontsize=8)
        ax.set_title(name, fontsize=9)
        ax.tick_params(axis="x", labelsize=8, rotation=15)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _per_layer_grid(per_layer: dict[str, float]):
    """``(layer indices, module names, matrix)`` from ``{"model.layers.3.mlp.up_proj": 0.5, ...}``."""
    import re

    cells, layers, kinds = {}, [], []
    for name, value in per_layer.items():
        m = re.search(r"layers\.(\d+)\.(.+)$", name)
        if not m:
            continue
        i, kind = int(m.group(1)), m.group(2).split(".")[-1]
        cells[(i, kind)] = value
        if i not in layers:
            layers.append(i)
        if kind not in kinds:
            kinds.append(kind)
    return sorted(layers), kinds, [[cells.get((i, k)) for k in kinds] for i in sorted(layers)]


def sparsity_markdown(per_layer: dict[str, float]) -> str:
    """Per-layer sparsity as a table: one row per decoder layer, one column per Linear."""
    layers, kinds, grid = _per_layer_grid(per_layer)
    if not layers:
        return ""
    lines = ["| layer | " + " | ".join(kinds) + " |", "|---" * (len(kinds) + 1) + "|"]
    for i, row in zip(layers, grid):
        lines.append(f"| {i} | " + " | ".join("-" if v is None else f"{v:.1%}" for v in row) + " |")
    return "\n".join(lines) + "\n"


def sparsity_heatmap(per_layer: dict[str, float], path: str | Path) -> Path | None:
    """A layers x modules heatmap of the fraction of zero weights."""
    layers, kinds, grid = _per_layer_grid(per_layer)
    if not layers:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    data = np.array([[np.nan if v is None else v for v in row] for row in grid], dtype=float)
    fig, ax = plt.subplots(figsize=(1.0 + 0.9 * len(kinds), 1.2 + 0.22 * len(layers)))
    im = ax.imshow(data, aspect="auto", cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(len(kinds)), kinds, rotation=30, fontsize=8)
    ax.set_yticks(range(len(layers)), [str(i) for i in layers], fontsize=7)
    ax.set_ylabel("decoder layer")
    ax.set_title("fraction of zero weights", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.05)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write(columns: list[Measurement], folder: str | Path, stem: str = "report", title: str | None = None,
          extra: dict | None = None) -> dict[str, Path]:
    """Write ``{stem}.md``, ``{stem}.json`` and ``{stem}.png`` into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    md = folder / f"{stem}.md"
    text = markdown(columns, title)
    per_layer = ((extra or {}).get("notes") or {}).get("prune", {}).get("per_layer_sparsity")
    if per_layer:
        text += "\n### Sparsity per layer\n\n" + sparsity_markdown(per_layer)
    md.write_text(text)
    js = folder / f"{stem}.json"
    js.write_text(json.dumps({"columns": [c.to_dict() for c in columns], **(extra or {})}, indent=2, default=str))
    out = {"markdown": md, "json": js}
    png = chart(columns, folder / f"{stem}.png")
    if png:
        out["png"] = png
    return out
