"""Magnitude pruning: per-layer against global against scale-normalized global, and the cost of
the exact global threshold against torch.nn.utils.prune.global_unstructured.

One run, one table, written to BENCHMARKS.md (section ``prune``). Wanda, SparseGPT, 2:4 and
llm-compressor's pruners join this table when those methods land.

Usage: python scripts/bench_prune.py [--models smollm2-135m] [--sparsity 0.5]
"""

from __future__ import annotations

import argparse
import gc

from _bench import ROOT, machine, run_child, this_python, write_section
from llmcompress import models
from llmcompress.data import EvaluationConfig, evaluation_windows
from llmcompress.evaluate import perplexity
from llmcompress.methods.prune import PruneConfig, apply_prune


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", nargs="+", default=["smollm2-135m"])
    ap.add_argument("--sparsity", type=float, default=0.5)
    args = ap.parse_args()
    rows, cost = [], []
    for alias in args.models:
        model, tok, src = models.load(alias)
        windows = evaluation_windows(tok, EvaluationConfig(max_tokens=2048, seq_len=512))
        dense = perplexity(model, windows)[0]
        rows.append(f"| {alias} | dense | {dense:.2f} |")
        del model
        for scope in ("layer", "global", "global_normalized"):
            model, _, _ = models.load(src)
            apply_prune(model, PruneConfig(sparsity=args.sparsity, scope=scope))
            rows.append(f"| {alias} | magnitude, {scope} | {perplexity(model, windows)[0]:.2f} |")
            del model
            gc.collect()
        res = {tool: run_child([this_python(), str(ROOT / "scripts/anchors/global_prune.py"), tool, str(src.path),
                                str(args.sparsity)]) for tool in ("torch", "llmcompress", "llmcompress-materialized")}
        for tool, r in res.items():
            cost.append(f"| {alias} | {tool} | {r['seconds']:.2f} | {r['peak_rss_mb']:.0f} | "
                        f"{r['peak_rss_mb'] - r['rss_after_load_mb']:.0f} | {r['zeros']:,} |")
        for tool in ("llmcompress", "llmcompress-materialized"):
            cost.append(f"| {alias} | speedup of {tool} | {res['torch']['seconds'] / res[tool]['seconds']:.1f}x | | | "
                        f"same count: {res[tool]['zeros'] == res['torch']['zeros']} |")
    table = (
        f"## Magnitude pruning, {args.sparsity:.0%} of the Linear weights (lm_head kept)\n\n"
        f"`python scripts/bench_prune.py` (one run; {machine()}). Perplexity on the first 2048 tokens of "
        "`wiki_eval` (512-token windows).\n\n| model | method | perplexity |\n|---|---|---|\n" + "\n".join(rows) +
        "\n\nGlobal threshold and masking, each tool in its own process (fp32 model; peak RSS includes the "
        "model, the growth column is the peak above the loaded model; `llmcompress-materialized` copies the "
        "weights into fresh memory before the timer starts, which removes the cost of the first write "
        "into the memory transformers loaded them into):\n\n"
        "| model | tool | seconds | peak RSS (MB) | growth over the loaded model (MB) | zeros |\n|---|---|---|---|---|---|\n"
        + "\n".join(cost) + "\n")
    print(table)
    write_section("prune", table)


if __name__ == "__main__":
    main()
