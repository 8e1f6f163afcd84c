"""GPTQ with the whole model in memory against ``low_memory`` (one decoder layer read, quantized and
written at a time): peak memory, time, and whether the written tensors are the same.

One run, one table, written to BENCHMARKS.md (section ``low_memory``). Each run is its own child
process; peak RSS is that process's VmHWM (/proc/self/status), model load included.

Usage: python scripts/bench_low_memory.py [--models smollm2-135m,qwen2.5-coder-0.5b] [--samples 32]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from _bench import invocation, machine, run_child, this_python, work_dir, write_section

GROUP = {"smollm2-135m": 64}  # SmolLM2's width 576 needs 64; the others take 128

CHILD = r"""
import json, sys, time
from llmcompress import CalibrationConfig, Recipe, compress
from llmcompress.methods.gptq import GPTQConfig
from llmcompress.recipe import OutputConfig
model, out, group, samples, low = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "1"
recipe = Recipe(stages=[GPTQConfig(bits=4, group_size=group, act_order=True)], name="bench-low-memory",
                output=OutputConfig(low_memory=low, verify=False))
t0 = time.perf_counter()
compress(model, recipe, out, calibration=CalibrationConfig(num_samples=samples, seq_len=512), evaluation=False,
         overwrite=True)
seconds = time.perf_counter() - t0
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(json.dumps({"seconds": seconds, "peak_rss_mb": hwm / 1024}))
"""


def tensors_equal(a: Path, b: Path) -> bool:
    import torch
    from safetensors.torch import load_file

    def load(folder):
        out = {}
        for f in sorted(folder.glob("*.safetensors")):
            out.update(load_file(f))
        return out

    x, y = load(a), load(b)
    return x.keys() == y.keys() and all(x[k].dtype == y[k].dtype and torch.equal(x[k], y[k]) for k in x)


def checkpoint_mb(model: str) -> float:
    from llmcompress import models
    from llmcompress.export import directory_size

    src = models.resolve(model)
    return directory_size(src.path) / 2**20 if src.path is not None else float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", default="smollm2-135m,qwen2.5-coder-0.5b")
    ap.add_argument("--samples", type=int, default=32, help="calibration windows of 512 tokens")
    ap.add_argument("--work", default=None, help="folder for the outputs, kept (default: a temp folder, removed at exit)")
    args = ap.parse_args()
    work = work_dir(args.work, "bench_low_memory_")
    rows = []
    for model in args.models.split(","):
        group = GROUP.get(model, 128)
        res = {}
        for low in (False, True):
            out = work / f"{model}-{'low' if low else 'full'}"
            print(f"[{model}] low_memory={low} ...", flush=True)
            res[low] = run_child([this_python(), "-c", CHILD, model, str(out), str(group), str(args.samples),
                                  "1" if low else "0"])
        same = tensors_equal(work / f"{model}-full", work / f"{model}-low")
        rows.append((model, group, checkpoint_mb(model), res, same))
    lines = [
        "## GPTQ on a model larger than memory: low_memory against the whole model in memory", "",
        f"`{invocation('bench_low_memory.py')}` (one run; {machine()}). "
        f"GPTQ int4, act-order, {args.samples} x 512 calibration tokens of `wiki_calib`, every other setting the "
        "default; each run in its own process, peak RSS = its VmHWM (model load included). `low_memory` builds the "
        "model on the meta device and reads, quantizes, writes and frees one decoder layer at a time; 'same tensors': "
        "every tensor of the two outputs is bit-identical.", "",
        "| model | group | checkpoint on disk (MB) | in memory: peak RSS (MB) | low_memory: peak RSS (MB) | ratio | "
        "in memory (s) | low_memory (s) | same tensors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for model, group, size, res, same in rows:
        full, low = res[False], res[True]
        lines.append(f"| {model} | {group} | {size:.0f} | {full['peak_rss_mb']:.0f} | {low['peak_rss_mb']:.0f} | "
                     f"{low['peak_rss_mb'] / full['peak_rss_mb']:.2f} | {full['seconds']:.0f} | {low['seconds']:.0f} | "
                     f"{'yes' if same else 'NO'} |")
    table = "\n".join(lines)
    print(table)
    (work / "results.json").write_text(json.dumps([list(r[:3]) + [r[3][False], r[3][True], r[4]] for r in rows]))
    write_section("low_memory", table)
    if not all(r[4] for r in rows):
        sys.exit("low_memory wrote different tensors")


if __name__ == "__main__":
    main()
