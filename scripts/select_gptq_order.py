"""Act-order and the scale observer together, chosen on selection text, never on evaluation text.

With act-order, groups are *static*: every group's scale is fitted to the original weights before
the column loop starts, while GPTQ's error feedback then moves the weights it has not reached yet.
An MSE clipping search fits those scales tightly to weights that will change; without act-order
each group's scale is fitted when the loop reaches it, to the updated weights. So the two options
may interact (`bench:gptq_ablation` on Qwen2.5-Coder-0.5B: act-order helped with minmax scales and
hurt with MSE scales). This runs the four combinations of ``act_order`` and ``observer`` with GPTAQ
(alpha 0.5, as the built-in int4 recipes) and measures perplexity on the two selection texts of
``select_gptaq_damp.py`` (unused ``wiki_calib`` windows, ``python_code``), which no benchmark reports.

One run, one table, BENCHMARKS.md section ``gptq_order`` unless ``--section`` names another.

Usage: python scripts/select_gptq_order.py [--models smollm2-135m qwen2.5-coder-0.5b] [--gptaq-alpha 0.5]
"""

from __future__ import annotations

import argparse

from _bench import work_dir, write_section
from select_gptaq_damp import GROUP, run_selection, selection_table

RUNS = [  # (label, options of scripts/anchors/llmcompress_quantize.py)
    ("act-order, mse (default)", []),
    ("act-order, minmax", ["--observer", "minmax"]),
    ("no act-order, mse", ["--no-act-order"]),
    ("no act-order, minmax", ["--no-act-order", "--observer", "minmax"]),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", nargs="+", default=list(GROUP))
    ap.add_argument("--gptaq-alpha", type=float, default=0.5)
    ap.add_argument("--work", default=None)
    ap.add_argument("--section", default="gptq_order")
    args = ap.parse_args()
    runs = [(label, ["--gptaq-alpha", str(args.gptaq_alpha), *opts]) for label, opts in RUNS]
    rows = run_selection(args.models, runs, work_dir(args.work, "select_gptq_order_"))
    md = selection_table("GPTQ act-order and scale observer, chosen on selection text", "select_gptq_order.py",
                         f"Symmetric int4, GPTAQ alpha {args.gptaq_alpha:g} (gptaq_damp 0.1), dampening 0.01",
                         args.models, rows)
    print(md)
    write_section(args.section, md)


if __name__ == "__main__":
    main()
