"""Pruning: perplexity of magnitude (per layer, global, scale-normalized global, OWL), Wanda and
SparseGPT at 50% and 2:4, structured MLP pruning, beside llm-compressor's Wanda and SparseGPT on
the same calibration tokens; and the cost of the exact global threshold against
torch.nn.utils.prune.global_unstructured.

One run, one table, written to BENCHMARKS.md (section ``prune``). llm-compressor runs in its own
virtual environment (scripts/setup_anchor_venvs.sh); every output is evaluated here, by the same code.

Usage: python scripts/bench_prune.py [--models smollm2-135m qwen2.5-coder-0.5b] [--samples 32 32]
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil

import torch

from _bench import ROOT, evaluate_dir, invocation, machine, ppl_by_text, python_of, run_child, this_python, work_dir, write_section
from llmcompress import models
from llmcompress.calibration import resolve_calibration_dtype
from llmcompress.data import CalibrationConfig, EvaluationConfig, calibration_batches, evaluation_windows
from llmcompress.methods.prune import PruneConfig, apply_prune
from llmcompress.methods.sparsegpt import SparseGPTConfig
from llmcompress.methods.wanda import WandaConfig
from llmcompress.modeling import count_parameters

TEXTS = ("wiki_eval", "python_docs")
SCOPES_50 = ("layer", "global", "global_normalized", "owl")  # magnitude scopes, at --sparsity
OURS = [("Wanda 50%", {"method": "wanda", "sparsity": 0.5}),
        ("SparseGPT 50%", {"method": "sparsegpt", "sparsity": 0.5}),
        ("Wanda 2:4", {"method": "wanda", "pattern": "2:4"}),
        ("SparseGPT 2:4", {"method": "sparsegpt", "pattern": "2:4"}),
        ("structured: 25% of MLP channels removed", {"method": "prune_structured", "mlp_ratio": 0.25})]
# --dtype-rows: the 2:4 runs again with float32 calibration forwards (both default to bf16),
# to show what the default costs or saves.
DTYPE_ROWS = [("Wanda 2:4, float32 forwards", {"method": "wanda", "pattern": "2:4", "calibration_dtype": "float32"}),
              ("SparseGPT 2:4, float32 forwards", {"method": "sparsegpt", "pattern": "2:4", "calibration_dtype": "float32"})]
# --owl-rows: OWL's per-decoder-layer sparsities for the calibrated pruners (settings from
# select_owl.py, the config defaults), at 50% and at 70%, where the paper finds its largest gains.
OWL_ROWS = [("Wanda 50%, OWL", {"method": "wanda", "sparsity": 0.5, "allocation": "owl"}),
            ("SparseGPT 50%, OWL", {"method": "sparsegpt", "sparsity": 0.5, "allocation": "owl"}),
            ("Wanda 70%", {"method": "wanda", "sparsity": 0.7}),
            ("Wanda 70%, OWL", {"method": "wanda", "sparsity": 0.7, "allocation": "owl"})]

# --sink-rows: Wanda and SparseGPT with the first position of each calibration window counted as
# w tokens (``first_token_weight``; w = 512, the window length: as much as the rest of its window)
# in the input norms / the Hessian, uniform and OWL; the first position is where Qwen2.5 forms its
# attention sink (bench:owl_sink).
def sink_rows(weights):
    return [(f"{label} 50%{owl}, first token x{w:g}",
             {"method": method, "sparsity": 0.5, "first_token_weight": w, **({"allocation": "owl"} if owl else {})})
            for w in weights for label, method in (("Wanda", "wanda"), ("SparseGPT", "sparsegpt"))
            for owl in ("", ", OWL")]


# --plain-rows: the calibrated rows with the other first_token_weight: the papers' plain mean (1)
# beside a default chosen on selection text (bench:sink_select, bench:sink_select_2of4), and where
# a default is the plain mean, the method's unstructured default.
def plain_rows():
    configs = {"wanda": WandaConfig, "sparsegpt": SparseGPTConfig}
    rows = []
    for label, stage in OURS:
        if stage["method"] in configs:
            cls = configs[stage["method"]]
            default = cls(**{k: v for k, v in stage.items() if k != "method"}).first_token_weight
            w = 1 if default != 1 else cls.FIRST_TOKEN_WEIGHT
            rows.append((f"{label}, first token x{w:g}", {**stage, "first_token_weight": w}))
    return rows


def gptaq_rows(alphas):
    """SparseGPT fitted to the full-precision model's outputs (``gptaq_alpha``), 50% and 2:4."""
    return [(f"SparseGPT {label}, asymmetric (alpha {a:g})", {"method": "sparsegpt", **opt, "gptaq_alpha": a})
            for a in alphas for label, opt in (("50%", {"sparsity": 0.5}), ("2:4", {"pattern": "2:4"}))]


ANCHORS = [("Wanda 50%", "wanda", "0.5"), ("SparseGPT 50%", "sparsegpt", "0.5"),
           ("Wanda 2:4", "wanda", "2:4"), ("SparseGPT 2:4", "sparsegpt", "2:4")]


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", nargs="+", default=["smollm2-135m", "qwen2.5-coder-0.5b"])
    ap.add_argument("--samples", nargs="+", type=int, default=[32, 32], help="calibration windows per model")
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--eval-tokens", type=int, default=2048, help="evaluation tokens per text (512-token windows)")
    ap.add_argument("--sparsity", type=float, default=0.5, help="magnitude pruning sparsity")
    ap.add_argument("--dtype-rows", action="store_true", help="also the 2:4 runs with the other calibration dtype")
    ap.add_argument("--owl-rows", action="store_true", help="also Wanda and SparseGPT with OWL allocation, and Wanda at 70%%")
    ap.add_argument("--plain-rows", action="store_true",
                    help="also Wanda and SparseGPT 50%% with first_token_weight 1 (the papers' plain mean), and at 2:4 "
                         "with the unstructured defaults")
    ap.add_argument("--sink-rows", action="store_true",
                    help="also Wanda and SparseGPT 50%% (uniform and OWL) with the first calibration position "
                         "weighted by each of --sink-weights")
    ap.add_argument("--sink-weights", nargs="+", type=float, default=[512.0],
                    help="first_token_weight values of the --sink-rows")
    ap.add_argument("--gptaq", nargs="*", type=float, default=[],
                    help="also SparseGPT 50%% and 2:4 with asymmetric calibration (gptaq_alpha) at these alphas")
    ap.add_argument("--anchor-venv", default=str(ROOT / ".dev" / "lc"), help="llm-compressor's virtual environment")
    ap.add_argument("--anchors", nargs="*", default=None, help="anchor runs to include (default all): "
                    + ", ".join(a[0].replace("%", "%%") for a in ANCHORS))
    ap.add_argument("--anchor-models", nargs="*", default=["smollm2-135m"],
                    help="models llm-compressor runs on (its CPU pruning is slow: ~15 s per calibration window on SmolLM2)")
    ap.add_argument("--threshold-models", nargs="*", default=["smollm2-135m"],
                    help="models for the global-threshold timing (torch.nn.utils.prune needs ~40x the weights in RAM)")
    ap.add_argument("--work", default=None, help="folder for the outputs and results.json, kept (default: a temp folder, removed at exit)")
    ap.add_argument("--rows", nargs="*", default=None,
                    help="llmcompress rows to run (default all), by label, e.g. 'SparseGPT 50%%' 'SparseGPT 2:4, asymmetric (alpha 0.5)'")
    ap.add_argument("--no-magnitude", action="store_true", help="skip the magnitude rows (a probe of the calibrated methods)")
    ap.add_argument("--magnitude-scopes", nargs="+", default=list(SCOPES_50) + ["2:4"],
                    help="magnitude rows to run: scopes at --sparsity, and 2:4")
    ap.add_argument("--section", default="prune", help="BENCHMARKS.md section to write")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0],
                    help="calibration seeds: each calibrated row (ours and llm-compressor's) runs once per seed on "
                         "that seed's windows, and the table adds each row's mean over the seeds")
    args = ap.parse_args()
    ours = OURS + (plain_rows() if args.plain_rows else []) + (DTYPE_ROWS if args.dtype_rows else []) + (OWL_ROWS if args.owl_rows else []) + (sink_rows(args.sink_weights) if args.sink_rows else []) + gptaq_rows(args.gptaq)
    unknown = set(args.rows or ()) - {label for label, _ in ours}
    if unknown:
        ap.error(f"--rows: no such row {sorted(unknown)}; rows: {[label for label, _ in ours]}")
    work = work_dir(args.work, "bench_prune_")
    anchor = python_of(args.anchor_venv)
    rows, cost, raw = [], [], {}
    for alias, n_samples in zip(args.models, args.samples + args.samples[-1:] * len(args.models)):
        model, tok, src = models.load(alias, dtype="float32")
        windows = {t: evaluation_windows(tok, EvaluationConfig(source=t, max_tokens=args.eval_tokens, seq_len=512)) for t in TEXTS}
        params = count_parameters(model)
        res = {"dense": {"ppl": ppl_by_text(model, windows), "params": params}}
        del model
        for scope in () if args.no_magnitude else [s for s in SCOPES_50 if s in args.magnitude_scopes]:
            model, _, _ = models.load(src, dtype="float32")
            apply_prune(model, PruneConfig(sparsity=args.sparsity, scope=scope))
            res[f"magnitude {args.sparsity:.0%}, {scope}"] = {"ppl": ppl_by_text(model, windows), "params": params}
            del model
            gc.collect()
        if not args.no_magnitude and "2:4" in args.magnitude_scopes:
            model, _, _ = models.load(src, dtype="float32")
            apply_prune(model, PruneConfig(pattern="2:4"))
            res["magnitude 2:4"] = {"ppl": ppl_by_text(model, windows), "params": params}
            del model
        if not anchor:
            print(f"llm-compressor venv not found at {args.anchor_venv}: run scripts/setup_anchor_venvs.sh")
        per_seed = {}
        for seed in args.seeds:
            # Every tool gets the same windows for a seed, in the same order.
            ids = calibration_batches(tok, CalibrationConfig(num_samples=n_samples, seq_len=args.seq_len, seed=seed))
            ids_path = work / f"{alias}-ids-{seed}.pt"
            torch.save(ids, ids_path)
            runs = [(f"llmcompress {label}", [this_python(), str(ROOT / "scripts/anchors/llmcompress_prune.py"),
                                              json.dumps(stage), str(src.path), str(ids_path)])
                    for label, stage in ours if args.rows is None or label in args.rows]
            if anchor and alias in args.anchor_models:
                runs += [(f"llm-compressor {label}", [str(anchor), str(ROOT / "scripts/anchors/llmcompressor_prune.py"),
                                                      method, str(src.path), str(ids_path), pattern])
                         for label, method, pattern in ANCHORS if args.anchors is None or label in args.anchors]
            for label, cmd in runs:
                key = label if len(args.seeds) == 1 else f"{label}, seed {seed}"
                out = work / f"{alias}-{key.replace(' ', '_').replace(':', '').replace('%', '').replace(',', '')}"
                shutil.rmtree(out, ignore_errors=True)
                print(f"[{alias}] {key} ...", flush=True)
                info = run_child(cmd + [str(out)])
                info.update(evaluate_dir(out, windows, dtype=torch.float32))
                res[key] = info
                per_seed.setdefault(label, []).append(info)
                shutil.rmtree(out, ignore_errors=True)
                (work / "results.json").write_text(json.dumps({**raw, alias: res}, indent=2))
        if len(args.seeds) > 1:
            for label, infos in per_seed.items():
                res[f"{label}, mean of {len(infos)} seeds"] = {
                    "ppl": {t: sum(i["ppl"][t] for i in infos) / len(infos) for t in TEXTS},
                    "params": infos[0]["params"],
                    "prune_s": sum(i["prune_s"] for i in infos) / len(infos),
                    "peak_rss_mb": max(i["peak_rss_mb"] for i in infos)}
        raw[alias] = {"samples": n_samples, **res}
        (work / "results.json").write_text(json.dumps(raw, indent=2))
        for label, info in res.items():
            cells = " | ".join(f"{info['ppl'][t]:.2f}" for t in TEXTS)
            t = f"{info['prune_s']:.0f}" if "prune_s" in info else "-"
            mem = f"{info['peak_rss_mb']:.0f}" if "peak_rss_mb" in info else "-"
            rows.append(f"| {alias} | {label} | {cells} | {info['params'] / 1e6:.1f}M | {t} | {mem} |")

        if alias not in args.threshold_models:
            continue
        timing = {tool: run_child([this_python(), str(ROOT / "scripts/anchors/global_prune.py"), tool, str(src.path),
                                   str(args.sparsity)]) for tool in ("torch", "llmcompress", "llmcompress-materialized")}
        for tool, r in timing.items():
            cost.append(f"| {alias} | {tool} | {r['seconds']:.2f} | {r['peak_rss_mb']:.0f} | "
                        f"{r['peak_rss_mb'] - r['rss_after_load_mb']:.0f} | {r['zeros']:,} |")
        for tool in ("llmcompress", "llmcompress-materialized"):
            cost.append(f"| {alias} | speedup of {tool} | {timing['torch']['seconds'] / timing[tool]['seconds']:.1f}x | | | "
                        f"same count: {timing[tool]['zeros'] == timing['torch']['zeros']} |")
    samples = ", ".join(f"{m}: {n}" for m, n in zip(args.models, args.samples + args.samples[-1:] * len(args.models)))
    mag_owl, cal_owl = PruneConfig(scope="owl"), WandaConfig(allocation="owl")
    w_wanda, w_sgpt = WandaConfig().first_token_weight, SparseGPTConfig().first_token_weight
    nm_wanda, nm_sgpt = WandaConfig(pattern="2:4").first_token_weight, SparseGPTConfig(pattern="2:4").first_token_weight
    table = (
        "## Pruning: magnitude, Wanda, SparseGPT, 2:4 and structured, beside llm-compressor"
        + (f" ({', '.join(args.models)})" if args.section != "prune" else "") + "\n\n"
        f"`{invocation('bench_prune.py')}` (one run; "
        f"{machine()}). All Linear layers but lm_head. Calibration "
        f"for the calibrated methods: random {args.seq_len}-token windows of the built-in `wiki_calib` text, "
        f"seed{'s ' + ', '.join(map(str, args.seeds)) if len(args.seeds) > 1 else ' ' + str(args.seeds[0])}"
        f"{' (a mean row averages a method over the seeds; its time is the mean, its memory the largest)' if len(args.seeds) > 1 else ''}, "
        f"the same token ids for llmcompress and llm-compressor ({samples} windows); llmcompress's calibration "
        f"forwards run in {str(resolve_calibration_dtype('fast', 'cpu')).removeprefix('torch.')} (the default "
        "`calibration_dtype: fast` on this CPU; "
        f"llm-compressor runs the float32 model as loaded). llmcompress's Wanda counts the first position of "
        f"each calibration window as {w_wanda:g} tokens in its input norms and SparseGPT as {w_sgpt:g} in its "
        f"Hessian at unstructured sparsity, {nm_wanda:g} and {nm_sgpt:g} at 2:4 (the `first_token_weight` "
        "defaults, chosen on selection text: `bench:sink_select`, `bench:sink_select_2of4`); "
        "llm-compressor takes the plain mean over positions, as the papers do"
        + ("; rows `first token xW` run llmcompress with the other weight (the plain mean, or for a default of 1 "
           "the unstructured default)" if args.plain_rows else "") + ". "
        f"Perplexity on the first {args.eval_tokens} "
        "tokens (512-token windows) of `wiki_eval` (held-out Wikipedia) and `python_docs` (another domain), "
        "every output evaluated by the same code in float32. Prune time and peak RSS are measured inside each "
        "tool's own child process (model load excluded from the time, included in the memory); '-' for the "
        "in-process magnitude runs. `owl`: per-decoder-layer sparsities from the share of outlier weights "
        f"(OWL; |w| above {mag_owl.owl_threshold:g}x its matrix's mean, sparsities within {args.sparsity:g} +- "
        f"{mag_owl.owl_lambda:g})" + (f"; `OWL` rows of Wanda and SparseGPT: the same from Wanda's |w| ||x|| on the "
        f"unpruned model, above {cal_owl.owl_threshold:g}x the mean, within +- {cal_owl.owl_lambda:g}"
        if args.owl_rows else "") + (f"; `first token xW`: Wanda's input norms (SparseGPT's Hessian) count "
        f"the first position of each {args.seq_len}-token calibration window as W tokens (`first_token_weight: W`; "
        f"W = {args.seq_len}: as much as the rest of its window), in OWL's outlier count too"
        if args.sink_rows else "") + ".\n\n"
        "| model | method | ppl wiki_eval | ppl python_docs | parameters | prune (s) | peak RSS (MB) |\n"
        "|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n" + (
        "\nGlobal threshold and masking, each tool in its own process (fp32 model; peak RSS includes the "
        "model, the growth column is the peak above the loaded model; `llmcompress-materialized` copies the "
        "weights into fresh memory before the timer starts, which removes the cost of the first write "
        "into the memory transformers loaded them into):\n\n"
        "| model | tool | seconds | peak RSS (MB) | growth over the loaded model (MB) | zeros |\n|---|---|---|---|---|---|\n"
        + "\n".join(cost) + "\n" if cost else ""))
    print(table)
    write_section(args.section, table)


if __name__ == "__main__":
    main()
