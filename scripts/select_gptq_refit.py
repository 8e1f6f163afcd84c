"""Whether to refit GPTQ's group scales after the column loop, chosen on selection text, never on
evaluation text.

GPTQ fixes each group's scale before its columns are rounded (from the weights alone, by the MSE
clipping search); once the codes are chosen, the layer's output error is a quadratic in the scales,
and ``refit_scales`` solves it per row (``llmcompress.methods.gptq.refit.refit_scales``). This runs
plain GPTQ and GPTAQ (alpha 0.5, as the built-in int4 recipes) with and without the refit and
measures perplexity on the two selection texts of ``select_gptaq_damp.py`` (unused ``wiki_calib``
windows, ``python_code``), which no benchmark reports.

One run, one table, BENCHMARKS.md section ``gptq_refit`` unless ``--section`` names another.

``--refit-damps``: instead, only refit runs, one per dampening of the refit's objective
(``refit_damp``, a fraction of the mean Hessian diagonal; the column loop keeps 0.01); compare them
with the same model's rows without ``--refit-damps`` on the same kind of CPU.

``--seeds 0 1 2``: each run once per calibration seed (the selection windows avoid every seed's
draw), and a summary of the paired comparison with the first run: one seed's difference is about
the scatter of the calibration draw, which is what a default should not be chosen on.
``--calibration`` and ``--refit-damp`` set a recipe's calibration text and the refit's dampening
(the ``refit`` runs only).

Usage: python scripts/select_gptq_refit.py [--models smollm2-135m qwen2.5-coder-0.5b] [--gptaq-alpha 0 0.5]
       [--refit-damps 0.1 1] [--seeds 0 1 2] [--calibration wiki_calib+python_code] [--refit-damp 1]
"""

from __future__ import annotations

import argparse

from _bench import work_dir, write_section
from select_gptaq_damp import GROUP, run_selection, seed_summary, selection_table


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", nargs="+", default=list(GROUP))
    ap.add_argument("--gptaq-alpha", nargs="+", type=float, default=[0.0, 0.5])
    ap.add_argument("--refit-damps", nargs="*", type=float, default=[])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0], help="calibration seeds, each run once per seed")
    ap.add_argument("--calibration", default="wiki_calib", help="calibration source (a blend: a+b)")
    ap.add_argument("--refit-damp", type=float, default=None, help="the refit runs' refit_damp (default: the config's)")
    ap.add_argument("--work", default=None)
    ap.add_argument("--section", default="gptq_refit")
    args = ap.parse_args()
    runs = []
    for alpha in args.gptaq_alpha:
        name = "plain GPTQ" if alpha == 0 else f"GPTAQ {alpha:g}"
        if args.refit_damps:
            runs += [(f"{name}, refit, refit_damp {d:g}",
                      ["--gptaq-alpha", str(alpha), "--refit-scales", "on", "--refit-damp", str(d)], args.calibration) for d in args.refit_damps]
        else:
            damp = [] if args.refit_damp is None else ["--refit-damp", str(args.refit_damp)]
            shown = "" if args.refit_damp is None else f", refit_damp {args.refit_damp:g}"
            runs += [(f"{name}, no refit", ["--gptaq-alpha", str(alpha), "--refit-scales", "off"], args.calibration),
                     (f"{name}, refit{shown}", ["--gptaq-alpha", str(alpha), "--refit-scales", "on", *damp], args.calibration)]
    records: list[dict] = []
    rows = run_selection(args.models, runs, work_dir(args.work, "select_gptq_refit_"), tuple(args.seeds), records)
    seeds = ", ".join(str(s) for s in args.seeds)
    md = selection_table("GPTQ scale refit after the column loop, chosen on selection text", "select_gptq_refit.py",
                         "Symmetric int4, act-order, MSE clipping search, dampening 0.01 (GPTAQ: gptaq_damp 0.1)",
                         args.models, rows,
                         calibration=f"random 512-token windows of `{args.calibration}`, seed{'s' if len(args.seeds) > 1 else ''} {seeds}",
                         **({"code": "the last 16 512-token windows of `python_code` that no calibration window overlaps"}
                            if "python_code" in args.calibration.split("+") else {}))
    if len(args.seeds) > 1:
        md += "\nOver the seeds (paired with the first run of each model):\n\n" + seed_summary(records)
    print(md)
    write_section(args.section, md)


if __name__ == "__main__":
    main()
