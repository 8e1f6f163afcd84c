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
import math
from collections.abc import Sequence

import torch

from _bench import ROOT, invocation, machine, run_child, this_python, work_dir, write_section
from llmcompress import models
from llmcompress.data import (CalibrationConfig, EvaluationConfig, blend_shares, calibration_batches, evaluation_windows,
                              tokenize_source)

GROUP = {"smollm2-135m": 64, "qwen2.5-coder-0.5b": 128}
SAMPLES = {"smollm2-135m": 128, "qwen2.5-coder-0.5b": 64}


def unused_windows(tok, n_samples: int | Sequence[int], seq_len: int, count: int = 16, seeds: tuple[int, ...] = (0,),
                   source: str = "wiki_calib") -> torch.Tensor:
    """The last ``count`` windows of ``source`` that no calibration draw of ``n_samples`` windows
    (one size, or several: a blend draws fewer from each of its texts) with any of ``seeds`` overlaps."""
    ids = tokenize_source(tok, CalibrationConfig(source=source))
    covered = torch.zeros(len(ids), dtype=torch.bool)
    for seed in seeds:
        for n in [n_samples] if isinstance(n_samples, int) else n_samples:
            gen = torch.Generator().manual_seed(seed)  # the draw of calibration_batches with this seed
            starts = torch.randint(0, len(ids) - seq_len, (n,), generator=gen)
            for s in starts.tolist():
                covered[s : s + seq_len] = True
    out, end = [], len(ids)
    while len(out) < count and end >= seq_len:
        if not covered[end - seq_len : end].any():
            out.append(ids[end - seq_len : end])
        end -= seq_len
    if len(out) < count:
        raise ValueError(f"only {len(out)} {source} windows are free of the calibration draws, {count} asked for")
    return torch.stack(out[::-1])


def part_draws(calibrations: list[str], n_samples: int) -> dict[str, list[int]]:
    """For each text, the sizes of the draws that ``calibration_batches`` takes from it over these
    calibration sources (``blend_shares``)."""
    draws: dict[str, list[int]] = {}
    for source in calibrations:
        for part, n in blend_shares(source, n_samples):
            draws.setdefault(part, []).append(n)
    return draws


def selection_windows(tok, n_samples: int, calibrations: list[str],
                      seeds: tuple[int, ...] = (0,)) -> dict[str, torch.Tensor]:
    """The two selection texts: ``wiki_calib`` windows that no calibration draw (with any of
    ``seeds``) overlaps, and 8192 tokens of ``python_code``: its first ones, or, when a calibration
    draws from it, its last windows that no draw overlaps."""
    draws = part_draws(calibrations, n_samples)
    code = (unused_windows(tok, draws["python_code"], 512, seeds=seeds, source="python_code") if "python_code" in draws
            else evaluation_windows(tok, EvaluationConfig(source="python_code", max_tokens=8192, seq_len=512)))
    return {"wiki_calib (unused windows)": unused_windows(tok, draws.get("wiki_calib", [n_samples]), 512, seeds=seeds),
            "python_code": code}


def run_selection(models_: list[str], runs: list[tuple], work, seeds: tuple[int, ...] = (0,),
                  records: list[dict] | None = None) -> list[str]:
    """Quantize each model once per ``(label, options of llmcompress_quantize.py[, calibration
    source])`` and calibration seed (symmetric int4, act-order unless the options say otherwise,
    calibrated as ``bench_gptq.py`` does, on ``wiki_calib`` unless the run names another source,
    seed 0 unless ``seeds`` names others) and measure the two selection texts, the same windows for
    every run and seed (none overlaps any seed's draw); one table row per run and seed, and, when
    ``records`` is a list, one dict per row appended to it."""
    quantize = [this_python(), str(ROOT / "scripts/anchors/llmcompress_quantize.py"), "gptq"]
    calibrations = [run[2] if len(run) > 2 else "wiki_calib" for run in runs]
    rows = []
    for alias in models_:
        _, tok, src = models.load(alias)
        n = SAMPLES[alias]
        torch.save(selection_windows(tok, n, calibrations, tuple(seeds)), work / "windows.pt")
        for seed in seeds:
            for (label, opts, *_), calibration in zip(runs, calibrations):
                ids = calibration_batches(tok, CalibrationConfig(source=calibration, num_samples=n, seq_len=512, seed=seed))
                torch.save(ids, work / "ids.pt")
                shown = label if len(seeds) == 1 else f"{label}, seed {seed}"
                print(f"[{alias}] {shown} ...", flush=True)
                info = run_child(quantize + [str(src.path), str(work / "ids.pt"), str(GROUP[alias]), str(work / "out"),
                                             "--eval", str(work / "windows.pt"), *opts])
                p = info["ppl"]
                rows.append(f"| {alias} | {shown} | {p['wiki_calib (unused windows)']:.3f} | {p['python_code']:.3f} | "
                            f"{info['quantize_s']:.0f} |")
                print(rows[-1], flush=True)
                if records is not None:
                    records.append({"model": alias, "run": label, "seed": seed, "wiki": p["wiki_calib (unused windows)"],
                                    "code": p["python_code"], "seconds": info["quantize_s"]})
    return rows


def seed_summary(records: list[dict]) -> str:
    """Markdown: for each model and run, the geometric mean perplexity over the calibration seeds
    and, against the model's first run, the mean log ratio and the seeds on which the run is lower
    (a paired comparison: both runs saw the same calibration windows for each seed)."""
    out = ["| model | run | seeds | geo-mean ppl wiki_calib (unused) | geo-mean ppl python_code | "
           "mean log ratio vs first run (wiki / code) | seeds lower than first run (wiki / code) |",
           "|---|---|---|---|---|---|---|"]
    for model in dict.fromkeys(r["model"] for r in records):
        mine = [r for r in records if r["model"] == model]
        labels = list(dict.fromkeys(r["run"] for r in mine))
        base = {r["seed"]: r for r in mine if r["run"] == labels[0]}
        for label in labels:
            rs = [r for r in mine if r["run"] == label]
            geo = {t: math.exp(sum(math.log(r[t]) for r in rs) / len(rs)) for t in ("wiki", "code")}
            lr = {t: sum(math.log(r[t] / base[r["seed"]][t]) for r in rs) / len(rs) for t in ("wiki", "code")}
            wins = {t: sum(r[t] < base[r["seed"]][t] for r in rs) for t in ("wiki", "code")}
            out.append(f"| {model} | {label} | {len(rs)} | {geo['wiki']:.3f} | {geo['code']:.3f} | "
                       f"{lr['wiki']:+.4f} / {lr['code']:+.4f} | {wins['wiki']} / {wins['code']} of {len(rs)} |")
    return "\n".join(out) + "\n"


def selection_table(title: str, script: str, setting: str, models_: list[str], rows: list[str],
                    calibration: str = "random 512-token windows of `wiki_calib`, seed 0",
                    code: str = "8192 tokens of `python_code`") -> str:
    """The markdown of one selection run: the command, the setting, the calibration and the rows."""
    cmd = invocation(script)
    return (f"## {title} ({', '.join(models_)})\n\n`{cmd}` (one run; {machine()}). {setting}, calibration as in "
            f"`bench_gptq.py` ({calibration}; "
            + ", ".join(f"{m}: {SAMPLES[m]} windows, group {GROUP[m]}" for m in models_)
            + f"). Perplexity on 16 `wiki_calib` windows that no calibration window overlaps and on {code}; "
            "neither text appears in any benchmark table.\n\n"
            "| model | run | ppl wiki_calib (unused windows) | ppl python_code | quantize (s) |\n|---|---|---|---|---|\n"
            + "\n".join(rows) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", nargs="+", default=list(GROUP))
    ap.add_argument("--damps", nargs="+", type=float, default=[0.01, 0.1, 1.0])
    ap.add_argument("--work", default=None)
    ap.add_argument("--section", default="gptaq_damp",
                    help="BENCHMARKS.md section to write (one per model set, so that a run for one model keeps the other's)")
    args = ap.parse_args()
    runs = [("plain GPTQ", ["--gptaq-alpha", "0"])]
    runs += [(f"GPTAQ 0.5, gptaq_damp {d:g}", ["--gptaq-alpha", "0.5", "--gptaq-damp", str(d)]) for d in args.damps]
    rows = run_selection(args.models, runs, work_dir(args.work, "select_gptaq_damp_"))
    md = selection_table("GPTAQ target dampening, chosen on selection text", "select_gptaq_damp.py",
                         "Symmetric int4, act-order", args.models, rows)
    print(md)
    write_section(args.section, md)


if __name__ == "__main__":
    main()
