"""Choose ``first_token_weight`` for Wanda and SparseGPT on selection text, never on evaluation text.

``first_token_weight`` w counts each calibration sequence's first position w times in Wanda's
input norms and in SparseGPT's Hessian (``methods/prune/config.py``, ``FirstTokenWeight``): the
first position carries the attention sink's massive activation (Sun et al., 2024, "Massive
activations in large language models"; Xiao et al., 2024, StreamingLLM), which a plain mean over
positions dilutes. Probes on the evaluation texts favoured w = 32 over 512 and over 1; this script
makes the choice where no benchmark table looks:

* ``wiki_calib`` windows that no calibration window of seeds 0, 1 or 2 overlaps (the last 16 such
  512-token windows);
* ``python_code`` (the standard library's source: another domain; the benchmarks evaluate on
  ``python_docs`` prose).

Calibration is ``bench_prune.py``'s: 32 random 512-token windows of ``wiki_calib`` per draw (seed).
Each pruning runs in a child process (``scripts/anchors/llmcompress_prune.py``) at uniform 50%.
Results go to a JSON file as each run ends, and a later call skips what is there, so the draws can
be split over several runs; the table covers the draws present for every weight. Score of a
weight on a model: the mean over draws and both texts of ``log(ppl / ppl with w = 1)``; per method
the lowest mean over the models is the choice (negative: better than the plain mean).

``--pattern 2:4`` runs the same selection at an N:M pattern instead of unstructured sparsity; its
results go to their own file (``select_sink_2of4.json``) and section (``sink_select_2of4``).

Usage: python scripts/select_sink.py [--models ...] [--methods wanda sparsegpt]
       [--weights 1 8 32 128 512] [--seeds 0] [--pattern 2:4] [--results scripts/results/select_sink.json]
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
from pathlib import Path

import torch

from _bench import ROOT, evaluate_dir, invocation, machine, ppl_by_text, run_child, this_python, work_dir, write_section
from select_gptaq_damp import unused_windows
from llmcompress import models
from llmcompress.data import CalibrationConfig, EvaluationConfig, calibration_batches, evaluation_windows

SAMPLES = 32
TEXTS = ("wiki_calib (unused windows)", "python_code")
ALL_SEEDS = (0, 1, 2)  # selection windows avoid every draw this script may use


def key(*parts) -> str:
    return "|".join(str(p) for p in parts)


def run(args, results: dict, path: Path) -> None:
    work = work_dir(args.work, "select_sink_")
    child = [this_python(), str(ROOT / "scripts/anchors/llmcompress_prune.py")]

    def save():
        path.write_text(json.dumps(results, indent=1, sort_keys=True))

    for alias in args.models:
        model, tok, src = models.load(alias, dtype="float32")
        windows = {TEXTS[0]: unused_windows(tok, SAMPLES, 512, seeds=ALL_SEEDS),
                   TEXTS[1]: evaluation_windows(tok, EvaluationConfig(source="python_code", max_tokens=8192, seq_len=512))}
        if key(alias, "dense") not in results:
            results[key(alias, "dense")] = {"ppl": ppl_by_text(model, windows, "dense")}
            save()
        del model  # the children load their own copies
        for seed in args.seeds:
            ids = calibration_batches(tok, CalibrationConfig(source="wiki_calib", num_samples=SAMPLES, seq_len=512, seed=seed))
            torch.save(ids, work / "ids.pt")
            for method in args.methods:
                for w in args.weights:
                    k = key(alias, method, seed, w)
                    if k in results:
                        continue
                    stage = {"method": method, "first_token_weight": w,
                             **({"pattern": args.pattern} if args.pattern else {"sparsity": args.sparsity})}
                    out = work / "out"
                    shutil.rmtree(out, ignore_errors=True)
                    info = run_child(child + [json.dumps(stage), str(src.path), str(work / "ids.pt"), str(out)])
                    results[k] = {"ppl": evaluate_dir(out, windows, dtype=torch.float32)["ppl"],
                                  "prune_s": round(info["prune_s"], 1), "machine": machine()}
                    shutil.rmtree(out, ignore_errors=True)
                    print(k, results[k], flush=True)
                    save()


def report(args, results: dict) -> str:
    # the weights run for a (model, method), and the draws present for every one of them: only those
    # enter the table and the score (a later probe may run fewer weights on a larger model)
    weights_of, draws = {}, {}
    for alias in args.models:
        for method in args.methods:
            mine = [k.split("|") for k in results if k.startswith(f"{alias}|{method}|")]
            weights_of[(alias, method)] = sorted({float(k[3]) for k in mine})
            draws[(alias, method)] = sorted(s for s in {int(k[2]) for k in mine}
                                            if all(key(alias, method, s, w) in results for w in weights_of[(alias, method)]))

    def ppl(alias, method, seed, w):
        return results[key(alias, method, seed, w)]["ppl"]

    def model_score(alias, method, w) -> float | None:
        logs = [math.log(ppl(alias, method, s, w)[t] / ppl(alias, method, s, 1.0)[t])
                for s in draws[(alias, method)] for t in TEXTS]
        return sum(logs) / len(logs) if logs else None

    def measured(method) -> list:  # the models with draws for this method
        return [a for a in args.models if draws[(a, method)]]

    def score(method, w) -> float | None:  # each model counts once, whatever its number of draws
        per_model = [model_score(a, method, w) for a in measured(method)]
        return sum(per_model) / len(per_model) if per_model else None

    shape = args.pattern or f"{args.sparsity:.0%}"
    chosen = {}
    for method in args.methods:
        # only weights run on every measured model compete, so that no weight is scored on one model alone
        common = set.intersection(*[set(weights_of[(a, method)]) for a in measured(method)]) if measured(method) else set()
        scored = [(score(method, w), w) for w in sorted(common)]
        if scored:
            chosen[method] = min(scored)[1]
    rows = []
    for alias in args.models:
        d = results[key(alias, "dense")]["ppl"]
        rows.append(f"| {alias} | dense | - | {d[TEXTS[0]]:.2f} | {d[TEXTS[1]]:.2f} | - | - |")
        for method in args.methods:
            seeds = draws[(alias, method)]
            if not seeds:
                continue
            for w in weights_of[(alias, method)]:
                per = [ppl(alias, method, s, w) for s in seeds]
                mean = {t: sum(p[t] for p in per) / len(per) for t in TEXTS}
                label = f"x{w:g}" + (" (plain mean)" if w == 1 else "")
                if chosen.get(method) == w:
                    label = f"**{label}** (chosen)"
                secs = sum(results[key(alias, method, s, w)]["prune_s"] for s in seeds) / len(seeds)
                rows.append(f"| {alias} | {method} {shape}, first token {label} | {', '.join(map(str, seeds))} | "
                            f"{mean[TEXTS[0]]:.2f} | {mean[TEXTS[1]]:.2f} | {model_score(alias, method, w):+.4f} | {secs:.0f} |")
    cmd = invocation("select_sink.py")
    # where the rows ran (a report-only call runs nothing); entries from before machines were recorded say so
    ran_on = sorted({results[key(a, m, s, w)].get("machine", "a machine not recorded")
                     for (a, m), seeds in draws.items() for s in seeds for w in weights_of[(a, m)]})
    return (f"## first_token_weight, chosen on selection text ({', '.join(args.models)})\n\n`{cmd}` (runs are "
            f"merged from `{args.results}`; rows run on {'; '.join(ran_on)}). Wanda and SparseGPT at "
            f"{'the ' + args.pattern + ' pattern' if args.pattern else 'uniform ' + shape}, each calibration sequence's first position counted w times (w = 1: the "
            "plain mean), calibrated on 32 random 512-token windows of `wiki_calib` per draw (the seeds column). "
            "Perplexity, mean over the draws, on 16 `wiki_calib` windows that no draw of seeds 0-2 overlaps and on "
            "8192 tokens of `python_code`; neither text appears in any benchmark table. Score: the mean over draws "
            "and both texts of log(ppl / ppl with w = 1) on that row's model; the choice per method minimises its "
            "mean over the models (each model once, whatever its number of draws). Prune time in seconds (child process; compare only rows run on one machine).\n\n"
            f"| model | run | seeds | ppl {TEXTS[0]} | ppl {TEXTS[1]} | score | prune (s) |\n|---|---|---|---|---|---|---|\n"
            + "\n".join(rows) + "\n\n"
            + "Chosen (over the models measured for each method): " + "; ".join(f"{m} w={w:g} (score {score(m, w):+.4f})" for m, w in chosen.items())
            + ".\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", nargs="+", default=["smollm2-135m", "qwen2.5-coder-0.5b"])
    ap.add_argument("--methods", nargs="+", default=["wanda", "sparsegpt"], choices=["wanda", "sparsegpt"])
    ap.add_argument("--weights", nargs="+", type=float, default=[1.0, 8.0, 32.0, 128.0, 512.0])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0], choices=ALL_SEEDS)
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--pattern", default=None, help="an N:M pattern (e.g. 2:4) instead of --sparsity")
    ap.add_argument("--results", default=None, help="default scripts/results/select_sink.json, "
                    "or select_sink_<N>of<M>.json with --pattern")
    ap.add_argument("--report-only", action="store_true", help="render the table from the results file")
    ap.add_argument("--work", default=None)
    ap.add_argument("--section", default=None, help="default sink_select, or sink_select_<N>of<M> with --pattern")
    args = ap.parse_args()
    suffix = "_" + args.pattern.replace(":", "of") if args.pattern else ""
    if args.pattern and ":" not in args.pattern:
        ap.error(f"--pattern {args.pattern!r}: expected N:M, e.g. 2:4")
    args.results = args.results or f"scripts/results/select_sink{suffix}.json"
    args.section = args.section or f"sink_select{suffix}"
    if 1.0 not in args.weights:
        ap.error("--weights must include 1 (the plain mean every score compares against)")
    path = ROOT / args.results
    results = json.loads(path.read_text()) if path.exists() else {}
    if not args.report_only:
        run(args, results, path)
    md = report(args, results)
    print(md)
    write_section(args.section, md)


if __name__ == "__main__":
    main()
