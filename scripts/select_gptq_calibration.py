"""Which text a GPTQ recipe calibrates on, chosen on selection text, never on evaluation text.

GPTQ's Hessians come from the calibration text, so a code model calibrated on prose alone fits
prose; the blend ``wiki_calib+python_code`` takes half its windows from Python source. This runs
the same GPTQ setting once per calibration source and measures perplexity on two selection texts
that no benchmark reports and no run's calibration windows touch: the last 16 unused
``wiki_calib`` windows and, when a blend draws from ``python_code``, its last 16 unused windows
(8192 tokens; ``python_code`` is source code, the benchmarks evaluate on ``python_docs`` prose).

One run, one table, BENCHMARKS.md section ``gptq_calibration`` unless ``--section`` names another.

Usage: python scripts/select_gptq_calibration.py [--models qwen2.5-coder-0.5b]
       [--calibrations wiki_calib wiki_calib+python_code] [--gptaq-alpha 0.5] [--refit-damp 1]
"""

from __future__ import annotations

import argparse

from _bench import work_dir, write_section
from select_gptaq_damp import GROUP, run_selection, selection_table


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", nargs="+", default=["qwen2.5-coder-0.5b"])
    ap.add_argument("--calibrations", nargs="+", default=["wiki_calib", "wiki_calib+python_code"])
    ap.add_argument("--gptaq-alpha", type=float, default=0.5, help="0: plain GPTQ")
    ap.add_argument("--refit-damp", type=float, default=None, help="the scale refit's dampening (default: the config's)")
    ap.add_argument("--work", default=None)
    ap.add_argument("--section", default="gptq_calibration")
    args = ap.parse_args()
    if len(set(args.calibrations)) < 2:
        ap.error("--calibrations: name at least two different sources to compare")
    opts = ["--gptaq-alpha", str(args.gptaq_alpha)]
    if args.refit_damp is not None:
        opts += ["--refit-damp", str(args.refit_damp)]
    name = "plain GPTQ" if args.gptaq_alpha == 0 else f"GPTAQ {args.gptaq_alpha:g}"
    runs = [(f"{name}, calibrated on `{c}`", opts, c) for c in args.calibrations]
    rows = run_selection(args.models, runs, work_dir(args.work, "select_gptq_calibration_"))
    refit = "" if args.refit_damp is None else f", scale refit dampened at {args.refit_damp:g}"
    md = selection_table(
        "GPTQ calibration text, chosen on selection text", "select_gptq_calibration.py",
        f"Symmetric int4, act-order, MSE clipping search{refit}", args.models, rows,
        calibration="random 512-token windows of each row's text, seed 0; a blend takes half its windows from each part",
        code="the last 16 512-token windows of `python_code` that no calibration window overlaps")
    print(md)
    write_section(args.section, md)


if __name__ == "__main__":
    main()
