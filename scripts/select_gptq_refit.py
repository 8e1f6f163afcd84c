"""Whether to refit GPTQ's group scales after the column loop, chosen on selection text, never on
evaluation text.

GPTQ fixes each group's scale before its columns are rounded (from the weights alone, by the MSE
clipping search); once the codes are chosen, the layer's output error is a quadratic in the scales,
and ``refit_scales`` solves it per row (``llmcompress.methods.gptq.gptq.refit_scales``). This runs
plain GPTQ and GPTAQ (alpha 0.5, as the built-in int4 recipes) with and without the refit and
measures perplexity on the two selection texts of ``select_gptaq_damp.py`` (unused ``wiki_calib``
windows, ``python_code``), which no benchmark reports.

One run, one table, BENCHMARKS.md section ``gptq_refit`` unless ``--section`` names another.

``--refit-damps``: instead, only refit runs, one per dampening of the refit's objective
(``refit_damp``, a fraction of the mean Hessian diagonal; the column loop keeps 0.01); compare them
with the same model's rows without ``--refit-damps`` on the same kind of CPU.

Usage: python scripts/select_gptq_refit.py [--models smollm2-135m qwen2.5-coder-0.5b] [--gptaq-alpha 0 0.5]
       [--refit-damps 0.1 1]
"""

from __future__ import annotations

import argparse

from _bench import work_dir, write_section
from select_gptaq_damp import GROUP, run_selection, selection_table


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", nargs="+", default=list(GROUP))
    ap.add_argument("--gptaq-alpha", nargs="+", type=float, default=[0.0, 0.5])
    ap.add_argument("--refit-damps", nargs="*", type=float, default=[])
    ap.add_argument("--work", default=None)
    ap.add_argument("--section", default="gptq_refit")
    args = ap.parse_args()
    runs = []
    for alpha in args.gptaq_alpha:
        name = "plain GPTQ" if alpha == 0 else f"GPTAQ {alpha:g}"
        if args.refit_damps:
            runs += [(f"{name}, refit, refit_damp {d:g}",
                      ["--gptaq-alpha", str(alpha), "--refit-scales", "on", "--refit-damp", str(d)]) for d in args.refit_damps]
        else:
            runs += [(f"{name}, no refit", ["--gptaq-alpha", str(alpha), "--refit-scales", "off"]),
                     (f"{name}, refit", ["--gptaq-alpha", str(alpha), "--refit-scales", "on"])]
    rows = run_selection(args.models, runs, work_dir(args.work, "select_gptq_refit_"))
    md = selection_table("GPTQ scale refit after the column loop, chosen on selection text", "select_gptq_refit.py",
                         "Symmetric int4, act-order, MSE clipping search, dampening 0.01 (GPTAQ: gptaq_damp 0.1)",
                         args.models, rows)
    print(md)
    write_section(args.section, md)


if __name__ == "__main__":
    main()
