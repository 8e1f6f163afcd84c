"""How much a GPTQ recipe's held-out perplexity moves with its calibration draw, against the
references that need no calibration (the original model, bitsandbytes nf4).

``bench_gptq.py`` measures one calibration draw (seed 0). When a recipe and nf4 differ by less
than the scatter between draws, one table cannot say which is better; this runs the recipe once
per calibration seed on the same evaluation windows and reports every seed, the mean and spread of
the perplexity increase, and on how many seeds it is below nf4's. Nothing is chosen on it: it
measures a setting already chosen on selection text.

Defaults are the Qwen recipe's (``recipes/gptq-w4a16.yaml``'s setting with the benches' 64
windows): symmetric int4, group 128, act-order, MSE clipping, GPTAQ 0.5 with the refit at
``refit_damp`` 1, calibrated on ``wiki_calib+python_code``; 8192 tokens per evaluation text.
Each quantization runs in a child process (``scripts/anchors/llmcompress_quantize.py``) and is
measured in memory (equal to its reloaded checkpoint: tests/integration/test_smollm2_gptq.py).

One run, one table, BENCHMARKS.md section ``gptq_seeds`` unless ``--section`` names another.

Usage: python scripts/bench_gptq_seeds.py [--model qwen2.5-coder-0.5b] [--seeds 0 1 2]
       [--asym --group 64 --refit-damp default]   (the asymmetric recipe's setting)
"""

from __future__ import annotations

import argparse
import math

import torch

from _bench import ROOT, evaluate_dir, invocation, machine, nf4_ppl, run_child, this_python, work_dir, write_section
from llmcompress import models
from bench_gptq import TEXTS
from llmcompress.data import CalibrationConfig, EvaluationConfig, calibration_batches, evaluation_windows


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--samples", type=int, default=64, help="calibration windows")
    ap.add_argument("--group", type=int, default=128)
    ap.add_argument("--asym", action="store_true", help="a zero point per group")
    ap.add_argument("--calibration", default="wiki_calib+python_code")
    ap.add_argument("--gptaq", type=float, default=0.5, help="gptaq_alpha (0: plain GPTQ)")
    ap.add_argument("--refit-damp", type=lambda v: None if v == "default" else float(v), default=1.0,
                    help="refit_damp (the refit is on with GPTAQ); 'default': the config's")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--eval-tokens", type=int, default=8192)
    ap.add_argument("--work", default=None)
    ap.add_argument("--section", default="gptq_seeds")
    args = ap.parse_args()
    if args.gptaq == 0 and args.refit_damp is not None:
        ap.error("--refit-damp needs the refit, which is on by default only with GPTAQ (--gptaq > 0)")

    work = work_dir(args.work, "bench_gptq_seeds_")
    _, tok, src = models.load(args.model)
    windows = {t: evaluation_windows(tok, EvaluationConfig(source=t, max_tokens=args.eval_tokens, seq_len=512))
               for t in TEXTS}
    torch.save(windows, work / "windows.pt")
    base = evaluate_dir(src.path, windows)["ppl"]
    print("original", base, flush=True)
    nf4 = nf4_ppl(src.path, windows)
    print("nf4", nf4, flush=True)

    opts = ["--gptaq-alpha", str(args.gptaq)] + (["--refit-damp", str(args.refit_damp)] if args.refit_damp is not None else [])
    opts += ["--asym"] if args.asym else []  # float16 scales, as the GPTQ v1 file the asymmetric recipe writes
    runs = []
    for seed in args.seeds:
        ids = calibration_batches(tok, CalibrationConfig(source=args.calibration, num_samples=args.samples,
                                                         seq_len=512, seed=seed))
        torch.save(ids, work / "ids.pt")
        print(f"seed {seed} ...", flush=True)
        info = run_child([this_python(), str(ROOT / "scripts/anchors/llmcompress_quantize.py"), "gptq", str(src.path),
                          str(work / "ids.pt"), str(args.group), str(work / "out"), "--eval", str(work / "windows.pt"),
                          *opts])
        runs.append((seed, info))
        print(seed, info["ppl"], f"{info['quantize_s']:.0f} s", flush=True)

    def inc(p: dict) -> str:
        return " | ".join(f"{p[t]:.3f} ({p[t] - base[t]:+.2f})" for t in TEXTS)

    rows = [f"| original | {inc(base)} | - |", f"| bitsandbytes nf4 (no calibration) | {inc(nf4)} | - |"]
    rows += [f"| llmcompress, seed {seed} | {inc(info['ppl'])} | {info['quantize_s']:.0f} |" for seed, info in runs]
    stats = []
    for t in TEXTS:
        d = [info["ppl"][t] - base[t] for _, info in runs]
        mean = sum(d) / len(d)
        sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (len(d) - 1)) if len(d) > 1 else float("nan")
        below = sum(info["ppl"][t] < nf4[t] for _, info in runs)
        stats.append(f"`{t}`: mean increase {mean:+.2f} (sample s.d. {sd:.2f}, range {min(d):+.2f} .. {max(d):+.2f}) "
                     f"against nf4's {nf4[t] - base[t]:+.2f}; below nf4 on {below} of {len(d)} seeds")
    grid = f"{'Asymmetric' if args.asym else 'Symmetric'} int4, group {args.group}, act-order, MSE clipping"
    damp = "the config's" if args.refit_damp is None else f"{args.refit_damp:g}"
    method = f"GPTAQ {args.gptaq:g} with the scale refit (refit_damp {damp})" if args.gptaq else "plain GPTQ"
    md = (f"## GPTQ recipe over calibration seeds ({args.model})\n\n"
          f"`{invocation('bench_gptq_seeds.py')}` (one run; {machine()}). {grid}, {method}; "
          f"{args.samples} random 512-token windows of `{args.calibration}` per seed "
          f"({', '.join(str(s) for s in args.seeds)}); every seed's model measured in memory on the same "
          f"{args.eval_tokens} tokens (512-token windows) of `wiki_eval` and `python_docs`. Perplexity "
          "(increase over the original):\n\n"
          "| model | ppl wiki_eval | ppl python_docs | quantize (s) |\n|---|---|---|---|\n"
          + "\n".join(rows) + "\n\n" + ";\n".join(stats) + ".\n")
    print(md)
    write_section(args.section, md)


if __name__ == "__main__":
    main()
