"""GPTQ int4 side by side: original, RTN, llmcompress GPTQ, llm-compressor GPTQ, bitsandbytes nf4.

One run, one table, written to BENCHMARKS.md (section ``gptq``). Each quantizer runs in its
own child process (llm-compressor in its own virtual environment, see
scripts/setup_anchor_venvs.sh) on the same calibration token windows; every output is then
evaluated here on the same held-out windows of two texts: Wikipedia (``wiki_eval``, held out
from the calibration articles) and the Python reference docs (``python_docs``, another domain).

Usage: python scripts/bench_gptq.py [--models smollm2-135m qwen2.5-coder-0.5b] [--samples 128 64]

Other settings, the same for every quantizer: ``--asym`` (a zero point per group; the outputs
cannot be reloaded here, so each child process measures its in-memory model, section
``gptq_asym``), ``--groups 64 64`` (group size per model), ``--calibration wiki_calib+python_code``
(a blend: half the windows from each text).
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil

import torch

from _bench import ROOT, evaluate_dir, invocation, machine, nf4_ppl, python_of, run_child, this_python, work_dir, write_section
from llmcompress import models
from llmcompress.data import CalibrationConfig, EvaluationConfig, calibration_batches, evaluation_windows
from llmcompress.export import directory_size

GROUP = {"smollm2-135m": 64, "qwen2.5-coder-0.5b": 128, "qwen2.5-coder-1.5b": 128}
TEXTS = ("wiki_eval", "python_docs")
DEFAULT_MODELS, DEFAULT_SAMPLES = ["smollm2-135m", "qwen2.5-coder-0.5b"], [128, 64]


def _damp(value: str) -> float | None:
    return None if value == "default" else float(value)


def _damp_text(damps: dict, models_: list[str]) -> str:
    """How the header names the refit's dampening, per model when they differ."""
    say = lambda d: "that of the column loop" if d is None else f"{d:g} of the mean Hessian diagonal"  # noqa: E731
    if len(set(damps.values())) == 1:
        return say(next(iter(damps.values())))
    return ", ".join(f"{m}: {say(damps[m])}" for m in models_)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    ap.add_argument("--samples", nargs="+", type=int, default=DEFAULT_SAMPLES, help="calibration windows per model")
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--eval-tokens", type=int, default=2048)
    ap.add_argument("--asym", action="store_true", help="a zero point per group (GPTQ v1 output; measured in memory)")
    ap.add_argument("--groups", nargs="+", type=int, default=None, help="group size per model (default: 64 for SmolLM2, 128 else)")
    ap.add_argument("--calibration", default="wiki_calib", help="calibration text, or a blend 'a+b'")
    ap.add_argument("--gptaq", nargs="*", type=float, default=[],
                    help="also llmcompress GPTQ with GPTAQ's asymmetric calibration at these alphas (e.g. 0.5 1)")
    ap.add_argument("--refit-damp", nargs="+", type=_damp, default=[None],
                    help="dampening of the scale refit (GPTQConfig.refit_damp) for the GPTAQ rows, whose refit is on: one "
                         "value for every model or one per model ('default': the config's, the column loop's dampening)")
    ap.add_argument("--section", default=None, help="BENCHMARKS.md section (default: gptq, or gptq_asym with --asym)")
    ap.add_argument("--anchor-venv", default=str(ROOT / ".dev" / "lc"), help="llm-compressor's virtual environment")
    ap.add_argument("--work", default=None, help="folder for the quantized outputs, kept (default: a temp folder, removed at exit)")
    args = ap.parse_args()
    work = work_dir(args.work, "bench_gptq_")
    anchor = python_of(args.anchor_venv)
    rows, raw = [], {}
    section = args.section or ("gptq_asym" if args.asym else "gptq")
    groups = dict(zip(args.models, args.groups)) if args.groups else GROUP
    if len(args.refit_damp) not in (1, len(args.models)):
        ap.error(f"--refit-damp takes one value or one per model ({len(args.models)}), not {len(args.refit_damp)}")
    refit_damps = dict(zip(args.models, args.refit_damp * len(args.models)))
    for alias, n_samples in zip(args.models, args.samples + args.samples[-1:] * len(args.models)):
        g = groups[alias]
        model, tok, src = models.load(alias)  # converts the GGUF once
        del model
        gc.collect()
        mdir = src.path
        ids = calibration_batches(tok, CalibrationConfig(source=args.calibration, num_samples=n_samples,
                                                         seq_len=args.seq_len, seed=0))
        ids_path = work / f"{alias}-ids.pt"
        torch.save(ids, ids_path)
        windows = {t: evaluation_windows(tok, EvaluationConfig(source=t, max_tokens=args.eval_tokens, seq_len=512))
                   for t in TEXTS}
        res = {"original": {"ppl": evaluate_dir(mdir, windows)["ppl"], "size_mb": directory_size(mdir) / 2**20}}
        extra = []
        if args.asym:
            windows_path = work / f"{alias}-windows.pt"
            torch.save(windows, windows_path)
            extra = ["--asym", "--eval", str(windows_path)]
        quantize = [this_python(), str(ROOT / "scripts/anchors/llmcompress_quantize.py")]
        rd = [] if refit_damps[alias] is None else ["--refit-damp", str(refit_damps[alias])]
        # The refit, and so its dampening, is on by default with GPTAQ only: plain rows keep their default.
        runs = [("RTN int4", quantize + ["rtn"], []), ("llmcompress GPTQ", quantize + ["gptq"], [])]
        if args.asym:  # the row above rounds scales to the v1 file's float16; llm-compressor keeps float32
            runs.append(("llmcompress GPTQ, float32 scales", quantize + ["gptq"], ["--scale-dtype", "float32"]))
        for alpha in args.gptaq:
            runs.append((f"llmcompress GPTQ + GPTAQ (alpha {alpha:g})", quantize + ["gptq"], ["--gptaq-alpha", str(alpha), *rd]))
        if anchor:
            runs.append(("llm-compressor GPTQ", [str(anchor), str(ROOT / "scripts/anchors/llmcompressor_gptq.py")], []))
        else:
            print(f"llm-compressor venv not found at {args.anchor_venv}: run scripts/setup_anchor_venvs.sh")
        for label, cmd, opts in runs:
            out = work / f"{alias}-{label.replace(' ', '_').replace(',', '').replace('(', '').replace(')', '').replace('+', 'and')}"
            shutil.rmtree(out, ignore_errors=True)
            tail = [str(mdir), str(ids_path), str(g), str(out), *extra, *opts]
            print(f"[{alias}] {label} ...", flush=True)
            info = run_child(cmd + tail)
            if "ppl" not in info:  # measured in the child when the output cannot be reloaded here
                info["ppl"] = evaluate_dir(out, windows)["ppl"]
            if out.exists():  # the float32-scale row is measured in memory only, not written
                info["size_mb"] = directory_size(out) / 2**20
            res[label] = info
        # bitsandbytes nf4: 4 bits too, no calibration (double quant, float32 compute like the others)
        res["bnb nf4"] = {"ppl": nf4_ppl(mdir, windows)}
        raw[alias] = {"samples": n_samples, "group_size": g, **res}
        base = res["original"]["ppl"]
        d_rtn = {t: res["RTN int4"]["ppl"][t] - base[t] for t in TEXTS}
        for label, info in res.items():
            cells = []
            for t in TEXTS:
                p = info["ppl"][t]
                rel = "" if label == "original" else f" (+{p - base[t]:.2f}, {(p - base[t]) / d_rtn[t]:.2f} of RTN's)"
                cells.append(f"{p:.2f}{rel}")
            q = f"{info['quantize_s']:.0f}" if "quantize_s" in info else "-"
            mem = f"{info['peak_rss_mb']:.0f}" if "peak_rss_mb" in info else "-"
            size = f"{info['size_mb']:.0f}" if "size_mb" in info else "-"
            rows.append(f"| {alias} | {label} | {cells[0]} | {cells[1]} | {q} | {mem} | {size} |")
        (work / "results.json").write_text(json.dumps(raw, indent=2))
    grid = ("asymmetric int4 (a zero point per group; llmcompress writes GPTQ v1, llm-compressor its asymmetric "
            "pack-quantized format; neither loads in this environment, so each child process measured its "
            "in-memory quantized model on the same windows; the row `llmcompress GPTQ` rounds its scales to the "
            "float16 the v1 file stores, `llmcompress GPTQ, float32 scales` keeps them in float32 as "
            "llm-compressor's in-memory model does)") if args.asym else "symmetric int4"
    gs = ", ".join(f"{m}: {groups[m]}" for m in args.models)
    calib = f"`{args.calibration}`" + (" (a blend: half the windows from each text)" if "+" in args.calibration else "")
    header = (
        f"## GPTQ int4 (W4A16{', asymmetric' if args.asym else ''}) against RTN, llm-compressor and bitsandbytes nf4\n\n"
        f"`{invocation('bench_gptq.py')}` (one run; {machine()}). Calibration: random 512-token windows of "
        f"{calib}, seed 0, the same token ids for both GPTQ implementations "
        f"({', '.join(f'{m}: {n} windows' for m, n in zip(args.models, args.samples))}); {grid}; group size "
        f"{gs}; act-order with static groups, dampening 0.01, block 128, lm_head kept; llmcompress: MSE clipping "
        "search; GPTAQ rows then refit each row's scales to the output error with the codes fixed "
        f"(`refit_scales`, by default on with GPTAQ only; its dampening `refit_damp` "
        f"{_damp_text(refit_damps, args.models)}). Perplexity on the first "
        f"{args.eval_tokens} tokens (512-token windows) of `wiki_eval` (held-out Wikipedia) and `python_docs` "
        "(Python reference docs, another domain); in brackets the increase over the original and its ratio "
        "to RTN's increase. Quantize time and peak RSS are measured inside each quantizer's own child "
        "process (model load excluded from the time, included in the memory). bnb nf4 stores about 4.13 "
        "bits per weight (blocks of 64); int4 stores 4 bits per weight plus, per group, a scale (16 bits in GPTQ v1 "
        "and in float16 / bfloat16 checkpoints; these float32 checkpoints keep float32 scales in compressed-tensors) "
        "and, asymmetric, a 4-bit zero point."
        + (" GPTAQ rows: the same GPTQ fitted to the full-precision model's layer outputs "
           "(asymmetric calibration, Li et al. 2025; alpha blends it with plain GPTQ's objective; the target's "
           "own dampening `gptaq_damp` at its default, 0.1)." if args.gptaq else "")
        + "\n\n"
        "| model | method | ppl wiki_eval | ppl python_docs | quantize (s) | peak RSS (MB) | size on disk (MB) |\n"
        "|---|---|---|---|---|---|---|\n")
    table = header + "\n".join(rows) + "\n"
    print(table)
    write_section(section, table)


if __name__ == "__main__":
    main()
