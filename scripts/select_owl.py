"""Choose OWL's outlier threshold ``M`` and spread ``lambda`` on selection text, never on evaluation text.

OWL (Yin et al., ICML 2024) gives each decoder layer its own sparsity from its share of
outlier scores. Its two settings decide how much the allocation moves, so they are chosen
here, once for magnitude pruning (``prune``, ``scope: owl``) and once for Wanda
(``allocation: owl``), on two texts that no benchmark table reports:

* ``wiki_calib`` windows that no calibration window touches (the last 16 such 512-token windows);
* ``python_code`` (the standard library's source: another domain; the benchmarks evaluate on
  ``python_docs`` prose).

Calibration is ``bench_prune.py``'s: 32 random 512-token windows of ``wiki_calib``, seed 0.
Each candidate is scored by the mean over models and texts of ``log(ppl / ppl of uniform
sparsity)``; the lowest score is the choice (negative: better than every layer at the same sparsity).

One run, one table, written to BENCHMARKS.md (section ``owl_select``).

Usage: python scripts/select_owl.py [--models smollm2-135m qwen2.5-coder-0.5b] [--sparsity 0.5]
"""

from __future__ import annotations

import argparse
import json
import math
import shutil

import torch

from _bench import ROOT, evaluate_dir, invocation, machine, ppl_by_text, run_child, this_python, work_dir, write_section
from select_gptaq_damp import unused_windows
from llmcompress import models
from llmcompress.data import CalibrationConfig, EvaluationConfig, calibration_batches, evaluation_windows
from llmcompress.methods.prune import PruneConfig, apply_prune

SAMPLES = 32
TEXTS = ("wiki_calib (unused windows)", "python_code")


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", nargs="+", default=["smollm2-135m", "qwen2.5-coder-0.5b"])
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--magnitude-grid", nargs="+", default=["5:0.04", "5:0.08", "10:0.04", "10:0.08", "20:0.08"],
                    help="M:lambda candidates for magnitude OWL")
    ap.add_argument("--wanda-grid", nargs="+", default=["3:0.04", "3:0.08", "5:0.04", "5:0.08", "5:0.12", "7:0.08", "10:0.08"],
                    help="M:lambda candidates for Wanda OWL")
    ap.add_argument("--work", default=None)
    ap.add_argument("--section", default="owl_select")
    args = ap.parse_args()
    grids = {"magnitude": [tuple(map(float, g.split(":"))) for g in args.magnitude_grid],
             "wanda": [tuple(map(float, g.split(":"))) for g in args.wanda_grid]}
    work = work_dir(args.work, "select_owl_")
    child = [this_python(), str(ROOT / "scripts/anchors/llmcompress_prune.py")]
    ppl: dict[tuple, dict] = {}  # (model, method, M or None, lambda or None) -> {text: ppl}
    seconds: dict[tuple, float] = {}
    for alias in args.models:
        model, tok, src = models.load(alias, dtype="float32")
        windows = {TEXTS[0]: unused_windows(tok, SAMPLES, 512),
                   TEXTS[1]: evaluation_windows(tok, EvaluationConfig(source="python_code", max_tokens=8192, seq_len=512))}
        ppl[(alias, "dense", None, None)] = ppl_by_text(model, windows, "dense")
        del model
        for owl in [None] + grids["magnitude"]:
            model, _, _ = models.load(src, dtype="float32")
            cfg = (PruneConfig(sparsity=args.sparsity) if owl is None else
                   PruneConfig(sparsity=args.sparsity, scope="owl", owl_threshold=owl[0], owl_lambda=owl[1]))
            apply_prune(model, cfg)
            key = (alias, "magnitude", *(owl or (None, None)))
            ppl[key] = ppl_by_text(model, windows, f"magnitude {owl}")
            print(key, ppl[key], flush=True)
            del model
        ids = calibration_batches(tok, CalibrationConfig(source="wiki_calib", num_samples=SAMPLES, seq_len=512, seed=0))
        torch.save(ids, work / "ids.pt")
        for owl in [None] + grids["wanda"]:
            stage = {"method": "wanda", "sparsity": args.sparsity, "first_token_weight": 1}  # as when selected (bench:owl_select)
            if owl is not None:
                stage.update(allocation="owl", owl_threshold=owl[0], owl_lambda=owl[1])
            out = work / "out"
            shutil.rmtree(out, ignore_errors=True)
            info = run_child(child + [json.dumps(stage), str(src.path), str(work / "ids.pt"), str(out)])
            key = (alias, "wanda", *(owl or (None, None)))
            ppl[key], seconds[key] = evaluate_dir(out, windows, dtype=torch.float32)["ppl"], info["prune_s"]
            print(key, ppl[key], f"{info['prune_s']:.0f} s", flush=True)
            shutil.rmtree(out, ignore_errors=True)
        (work / "results.json").write_text(json.dumps([[list(k), v] for k, v in ppl.items()], indent=2))

    def score(method, owl) -> float:
        """Mean over models and texts of log(ppl / the same method's uniform ppl)."""
        logs = [math.log(ppl[(m, method, *owl)][t] / ppl[(m, method, None, None)][t]) for m in args.models for t in TEXTS]
        return sum(logs) / len(logs)

    chosen = {method: min(grid, key=lambda o: score(method, o)) for method, grid in grids.items()}
    rows = []
    for alias in args.models:
        d = ppl[(alias, "dense", None, None)]
        rows.append(f"| {alias} | dense | {d[TEXTS[0]]:.2f} | {d[TEXTS[1]]:.2f} | - | - |")
        for method, grid in grids.items():
            for owl in [None] + grid:
                p = ppl[(alias, method, *(owl or (None, None)))]
                label = "uniform" if owl is None else f"OWL M={owl[0]:g}, lambda={owl[1]:g}"
                if owl is not None and owl == chosen[method]:
                    label = f"**{label}** (chosen)"
                sc = "-" if owl is None else f"{score(method, owl):+.4f}"
                t = seconds.get((alias, method, *(owl or (None, None))))
                rows.append(f"| {alias} | {method} {args.sparsity:.0%}, {label} | {p[TEXTS[0]]:.2f} | {p[TEXTS[1]]:.2f} | "
                            f"{sc} | {'-' if t is None else f'{t:.0f}'} |")
    cmd = invocation("select_owl.py")
    md = (f"## OWL settings, chosen on selection text ({', '.join(args.models)})\n\n`{cmd}` (one run; {machine()}). "
          f"Magnitude pruning (`prune`, `scope: owl`: outliers of |w|) and Wanda (`allocation: owl`: outliers of "
          f"Wanda's |w| ||x|| on the unpruned model) at {args.sparsity:.0%} mean sparsity, each decoder layer's sparsity "
          "within +-lambda of it; Wanda calibrated on 32 random 512-token windows of `wiki_calib` (seed 0, as in "
          "`bench_prune.py`). Perplexity on 16 `wiki_calib` windows that no calibration window overlaps and on 8192 "
          "tokens of `python_code`; neither text appears in any benchmark table. Score: the mean over the models and "
          "both texts of log(ppl / the same method's uniform ppl), the lower the better; the chosen setting has the "
          "lowest. Prune time in seconds (Wanda with OWL includes its extra calibration pass).\n\n"
          f"| model | run | ppl {TEXTS[0]} | ppl {TEXTS[1]} | score | prune (s) |\n|---|---|---|---|---|---|\n"
          + "\n".join(rows) + "\n\n"
          + "Chosen: " + "; ".join(f"{m} M={o[0]:g}, lambda={o[1]:g} (score {score(m, o):+.4f})" for m, o in chosen.items())
          + ".\n")
    print(md)
    write_section(args.section, md)


if __name__ == "__main__":
    main()
