"""Distillation throughput against TRL's GKDTrainer: the same pruned student, teacher, tokens, loss
(generalized JSD, beta 0.5, off-policy) and optimizer, each trainer in its own process.

One run, one table, written to BENCHMARKS.md (section ``distill_speed``). TRL lives apart
(``python -m pip install --no-deps --target .dev/trl_site trl==1.16.0``; it imports with this
project's transformers, accelerate and datasets).

Usage: python scripts/bench_distill_speed.py [--steps 20] [--batch 4] [--seq-len 256]
"""

from __future__ import annotations

import argparse
import copy

import torch

from _bench import ROOT, invocation, machine, run_child, this_python, work_dir, write_section

OURS = r"""
import json, sys, time, torch
from llmcompress.context import Context
from llmcompress.methods.distill import DistillConfig, apply_distill
from transformers import AutoModelForCausalLM, AutoTokenizer
student_dir, teacher, steps, batch, top_k = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
ids = torch.load(f"{student_dir}/train_ids.pt")
tok = AutoTokenizer.from_pretrained(student_dir)
student = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32)
cfg = DistillConfig(teacher=teacher, teacher_dtype="float32", loss="jsd", beta=0.5, alpha=0.0, top_k=top_k,
                    cache_dir=sys.argv[6] if top_k else "", max_steps=steps, batch_size=batch, learning_rate=1e-4,
                    mixed_precision="bf16", logging_steps=max(1, steps // 4), seed=0)
ctx = Context(tokenizer=tok, calibration=lambda: ids)
apply_distill(student, cfg, ctx)
n = ctx.notes["distill"]
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(json.dumps({"seconds": n["train_seconds"], "tokens": n["tokens"], "cache_seconds": n.get("cache_seconds"),
                  "peak_rss_mb": hwm / 1024}))
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--work", default=None, help="folder for the outputs, kept (default: a temp folder, removed at exit)")
    args = ap.parse_args()
    from llmcompress import models
    from llmcompress.context import Context
    from llmcompress.data import CalibrationConfig, calibration_batches
    from llmcompress.methods.structured import StructuredPruneConfig, apply_structured

    trl_site = ROOT / ".dev" / "trl_site"
    if not (trl_site / "trl").is_dir():
        raise SystemExit(f"TRL is not installed in {trl_site}: python -m pip install --no-deps --target {trl_site} trl==1.16.0")
    work = work_dir(args.work, "bench_distill_speed_")
    dense, tok, src = models.load(args.model, dtype="float32")
    prune_ids = calibration_batches(tok, CalibrationConfig(num_samples=64, seq_len=512, seed=0))
    student = copy.deepcopy(dense)
    apply_structured(student, StructuredPruneConfig(mlp_ratio=0.25), Context(tokenizer=tok, calibration=lambda: prune_ids))
    student_dir = work / "student"
    student.save_pretrained(student_dir)
    tok.save_pretrained(student_dir)
    ids = calibration_batches(tok, CalibrationConfig(num_samples=args.steps * args.batch, seq_len=args.seq_len, seed=1))
    torch.save(ids, student_dir / "train_ids.pt")
    del dense, student
    common = [str(student_dir), str(src.path), str(args.steps), str(args.batch)]
    rows = {}
    print("TRL GKDTrainer ...", flush=True)
    rows["TRL 1.16 GKDTrainer (lmbda 0, teacher online)"] = run_child(
        [this_python(), str(ROOT / "scripts/anchors/trl_gkd_speed.py"), *common, str(args.seq_len)],
        env={"PYTHONPATH": str(trl_site)})
    print("llmcompress, teacher online ...", flush=True)
    rows["llmcompress, teacher online"] = run_child([this_python(), "-c", OURS, *common, "0", ""])
    print("llmcompress, top-32 cache ...", flush=True)
    rows["llmcompress, top-32 cache (teacher freed)"] = run_child([this_python(), "-c", OURS, *common, "32",
                                                                    str(work / "cache")])
    trl_tps = next(iter(rows.values()))
    base = trl_tps["tokens"] / trl_tps["seconds"]
    lines = [
        "## Distillation throughput against TRL's GKDTrainer", "",
        f"`{invocation('bench_distill_speed.py')}` (one run; {machine()}). Student: {args.model} with 25% of its MLP channels removed "
        "(calibrated activation scores); teacher: the unpruned model, float32. Each trainer in its own process: "
        f"{args.steps} steps of {args.batch} x {args.seq_len} tokens, generalized JSD (beta 0.5) on every token, "
        "off-policy (TRL: lmbda 0, no generation), AdamW lr 1e-4 cosine, bf16 autocast. Training time only (the "
        "cache build is listed apart); peak RSS = VmHWM of the process, model loads included.", "",
        "| trainer | train tokens/s | vs TRL | peak RSS (MB) | cache build (s) |", "|---|---|---|---|---|",
    ]
    for label, r in rows.items():
        tps = r["tokens"] / r["seconds"]
        cache = r.get("cache_seconds")
        lines.append(f"| {label} | {tps:.0f} | {tps / base:.2f} | {r['peak_rss_mb']:.0f} | "
                     f"{cache if cache is not None else '-'} |")
    table = "\n".join(lines)
    print(table)
    write_section("distill_speed", table)


if __name__ == "__main__":
    main()
