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
import shlex
import sys

import torch

from _bench import ROOT, machine, run_child, this_python, work_dir, write_section
from llmcompress import models
from llmcompress.data import CalibrationConfig, EvaluationConfig, calibration_batches, evaluation_windows
from select_gptaq_damp import GROUP, SAMPLES, unused_windows

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
    work = work_dir(args.work, "select_gptq_order_")
    quantize = [this_python(), str(ROOT / "scripts/anchors/llmcompress_quantize.py"), "gptq"]
    rows = []
    for alias in args.models:
        _, tok, src = models.load(alias)
        n = SAMPLES[alias]
        ids = calibration_batches(tok, CalibrationConfig(source="wiki_calib", num_samples=n, seq_len=512, seed=0))
        torch.save(ids, work / "ids.pt")
        windows = {"wiki_calib (unused windows)": unused_windows(tok, n, 512),
                   "python_code": evaluation_windows(tok, EvaluationConfig(source="python_code", max_tokens=8192, seq_len=512))}
        torch.save(windows, work / "windows.pt")
        for label, opts in RUNS:
            print(f"[{alias}] {label} ...", flush=True)
            info = run_child(quantize + [str(src.path), str(work / "ids.pt"), str(GROUP[alias]), str(work / "out"),
                                         "--eval", str(work / "windows.pt"), "--gptaq-alpha", str(args.gptaq_alpha),
                                         *opts])
            p = info["ppl"]
            rows.append(f"| {alias} | {label} | {p['wiki_calib (unused windows)']:.3f} | {p['python_code']:.3f} | "
                        f"{info['quantize_s']:.0f} |")
            print(rows[-1], flush=True)
    cmd = shlex.join(["python", "scripts/select_gptq_order.py", *sys.argv[1:]])
    md = (f"## GPTQ act-order and scale observer, chosen on selection text ({', '.join(args.models)})\n\n`{cmd}` "
          f"(one run; {machine()}). Symmetric int4, GPTAQ alpha {args.gptaq_alpha:g} (gptaq_damp 0.1), dampening "
          "0.01, calibration as in `bench_gptq.py` (random 512-token windows of `wiki_calib`, seed 0; "
          + ", ".join(f"{m}: {SAMPLES[m]} windows, group {GROUP[m]}" for m in args.models)
          + "). Perplexity on 16 `wiki_calib` windows that no calibration window overlaps and on 8192 tokens "
          "of `python_code`; neither text appears in any benchmark table.\n\n"
          "| model | run | ppl wiki_calib (unused windows) | ppl python_code | quantize (s) |\n|---|---|---|---|---|\n"
          + "\n".join(rows) + "\n")
    print(md)
    write_section(args.section, md)


if __name__ == "__main__":
    main()
