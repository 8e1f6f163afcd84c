"""Choose GPTAQ's target dampening (``gptaq_damp``) on selection text, never on evaluation text.

GPTAQ's shifted target ``W + alpha W D (H + lambda I)^-1`` is a ridge regression; this runs
llmcompress GPTQ + GPTAQ (alpha 0.5, symmetric int4, act-order, calibrated on ``wiki_calib``
exactly as ``bench_gptq.py`` does) once per candidate ``lambda`` and measures perplexity on
two selection texts that no benchmark reports:

* ``wiki_calib`` windows that no calibration window touches (the last 16 such 512-token windows);
* ``python_code`` (the standard library's source: another domain; the benchmarks evaluate on
  ``python_docs`` prose).

One run, one table, written to BENCHMARKS.md (section ``gptaq_damp`` unless ``--section`` names another).

Usage: python scripts/select_gptaq_damp.py [--models smollm2-135m qwen2.5-coder-0.5b] [--damps 0.01 0.1 1]
"""

from __future__ import annotations

import argparse
import shlex
import sys

import torch

from _bench import ROOT, machine, run_child, this_python, work_dir, write_section
from llmcompress import models
from llmcompress.data import CalibrationConfig, EvaluationConfig, calibration_batches, evaluation_windows, tokenize_source

GROUP = {"smollm2-135m": 64, "qwen2.5-coder-0.5b": 128}
SAMPLES = {"smollm2-135m": 128, "qwen2.5-coder-0.5b": 64}


def unused_windows(tok, n_samples: int, seq_len: int, count: int = 16) -> torch.Tensor:
    """The last ``count`` windows of ``wiki_calib`` that no calibration window overlaps."""
    ids = tokenize_source(tok, CalibrationConfig(source="wiki_calib"))
    gen = torch.Generator().manual_seed(0)  # the draw of calibration_batches (seed 0)
    starts = torch.randint(0, len(ids) - seq_len, (n_samples,), generator=gen)
    covered = torch.zeros(len(ids), dtype=torch.bool)
    for s in starts.tolist():
        covered[s : s + seq_len] = True
    out, end = [], len(ids)
    while len(out) < count and end >= seq_len:
        if not covered[end - seq_len : end].any():
            out.append(ids[end - seq_len : end])
        end -= seq_len
    return torch.stack(out[::-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", nargs="+", default=list(GROUP))
    ap.add_argument("--damps", nargs="+", type=float, default=[0.01, 0.1, 1.0])
    ap.add_argument("--work", default=None)
    ap.add_argument("--section", default="gptaq_damp",
                    help="BENCHMARKS.md section to write (one per model set, so that a run for one model keeps the other's)")
    args = ap.parse_args()
    work = work_dir(args.work, "select_gptaq_damp_")
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
        runs = [("plain GPTQ", ["--gptaq-alpha", "0"])]
        runs += [(f"GPTAQ 0.5, gptaq_damp {d:g}", ["--gptaq-alpha", "0.5", "--gptaq-damp", str(d)]) for d in args.damps]
        for label, opts in runs:
            print(f"[{alias}] {label} ...", flush=True)
            info = run_child(quantize + [str(src.path), str(work / "ids.pt"), str(GROUP[alias]), str(work / "out"),
                                         "--eval", str(work / "windows.pt"), *opts])
            p = info["ppl"]
            rows.append(f"| {alias} | {label} | {p['wiki_calib (unused windows)']:.3f} | {p['python_code']:.3f} | "
                        f"{info['quantize_s']:.0f} |")
            print(rows[-1], flush=True)
    cmd = shlex.join(["python", "scripts/select_gptaq_damp.py", *sys.argv[1:]])
    md = (f"## GPTAQ target dampening, chosen on selection text ({', '.join(args.models)})\n\n`{cmd}` (one run; {machine()}). Symmetric int4, "
          "act-order, calibration as in `bench_gptq.py` (random 512-token windows of `wiki_calib`, seed 0; "
          + ", ".join(f"{m}: {SAMPLES[m]} windows, group {GROUP[m]}" for m in args.models)
          + "). Perplexity on 16 `wiki_calib` windows that no calibration window overlaps and on 8192 tokens "
          "of `python_code`; neither text appears in any other table.\n\n"
          "| model | run | ppl wiki_calib (unused windows) | ppl python_code | quantize (s) |\n|---|---|---|---|---|\n"
          + "\n".join(rows) + "\n")
    print(md)
    write_section(args.section, md)


if __name__ == "__main__":
    main()
