"""Distillation: recovery of a structurally pruned model by KD against cross-entropy only, at equal
steps and tokens; peak memory of one loss step, chunked against naive full-vocabulary float32; and
training throughput with the top-k cache against the teacher in the loop with a naive loss.

One run, one table, written to BENCHMARKS.md (section ``distill``).

Usage: python scripts/bench_distill.py [--model smollm2-135m] [--mlp-ratio 0.25] [--steps 60]

Two setups: (b) the default, a structurally pruned copy of the model learning from the unpruned one;
(a) a smaller member of the family learning from a larger one, e.g.
``--model qwen2.5-coder-0.5b --teacher qwen2.5-coder-1.5b --mlp-ratio 0 --section distill_qwen
--variants ce,fkl,rkl,jsd --skip-memory`` (needs ``WITH_1_5B=1 bash scripts/setup_bench_models.sh``).
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

from transformers import TrainerCallback

from _bench import ROOT, invocation, machine, ppl_by_text, run_child, this_python, work_dir, write_section
from llmcompress import models
from llmcompress.context import Context
from llmcompress.data import CalibrationConfig, EvaluationConfig, calibration_batches, evaluation_windows
from llmcompress.methods.distill import DistillConfig, apply_distill
from llmcompress.methods.structured import StructuredPruneConfig, apply_structured
from llmcompress.modeling import count_parameters

TEXTS = ("wiki_eval", "python_docs")
VARIANTS = {  # key: (label, DistillConfig options); top_k: 0 means the teacher stays in the loop
    "ce": ("cross-entropy only", dict(alpha=1.0)),
    "fkl": ("forward KL", dict(alpha=0.0)),
    "fkl_ce": ("forward KL + CE (alpha 0.5)", dict(alpha=0.5)),
    "fkl_t2_ce": ("forward KL T=2 + CE (alpha 0.5)", dict(alpha=0.5, temperature=2.0)),
    "rkl": ("reverse KL", dict(loss="reverse_kl", alpha=0.0)),
    "rkl_ce": ("reverse KL + CE (alpha 0.5)", dict(loss="reverse_kl", alpha=0.5)),
    "jsd": ("JSD(0.5)", dict(loss="jsd", alpha=0.0)),
    "jsd_ce": ("JSD(0.5) + CE (alpha 0.5)", dict(loss="jsd", alpha=0.5)),
    "online_naive": ("forward KL + CE, teacher online, naive loss", dict(alpha=0.5, top_k=0, chunk_size=10**9)),
    # decoder-layer outputs too (students as wide as the teacher: the pruned copy, setup (b)); teacher online
    "fkl_ce_hid": ("forward KL + CE + layer outputs (teacher online)", dict(alpha=0.5, top_k=0, hidden_weight=1.0)),
    "fkl_ce_hid4": ("forward KL + CE + 4 x layer outputs (teacher online)", dict(alpha=0.5, top_k=0, hidden_weight=4.0)),
    # Minitron's teacher correction: the teacher first trains --correction-steps (default --steps) on the same windows
    "fkl_ce_tc": ("forward KL + CE (alpha 0.5), teacher corrected first", dict(alpha=0.5, correct=True)),
}
DEFAULT_VARIANTS = "ce,fkl,fkl_ce,fkl_t2_ce,rkl_ce,jsd_ce,online_naive"


class EvalAt(TrainerCallback):
    """Perplexity of the student at given steps (perplexity against tokens)."""

    def __init__(self, steps, windows, tokens_per_step):
        self.steps, self.windows, self.tps, self.curve = set(steps), windows, tokens_per_step, []

    def on_step_end(self, args, state, control, model=None, **kw):
        if state.global_step in self.steps:
            self.curve.append({"step": state.global_step, "tokens": state.global_step * self.tps,
                               **ppl_by_text(model, self.windows)})


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--mlp-ratio", type=float, default=0.25)
    ap.add_argument("--samples", type=int, default=512, help="training windows")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--top-k", type=int, default=32)
    ap.add_argument("--precision", default="bf16", help="mixed precision of training: bf16 | no")
    ap.add_argument("--teacher", default=None, help="teacher alias (default: --model, unpruned)")
    ap.add_argument("--teacher-dtype", default="float32")
    ap.add_argument("--correction-steps", type=int, default=0,
                    help="teacher-correction steps of the fkl_ce_tc variant (default: --steps, the student's budget)")
    ap.add_argument("--variants", default=DEFAULT_VARIANTS, help="comma list of: " + ", ".join(VARIANTS))
    ap.add_argument("--section", default="distill", help="BENCHMARKS.md section to write")
    ap.add_argument("--skip-memory", action="store_true", help="skip the loss-step memory measurement")
    ap.add_argument("--render", help="only re-render the table from a results.json of an earlier run")
    ap.add_argument("--memory-only", action="store_true",
                    help="only measure the loss-step memory (section distill_memory)")
    ap.add_argument("--work", default=None, help="folder for the outputs, kept (default: a temp folder, removed at exit)")
    args = ap.parse_args()
    if args.memory_only:
        return memory_table(measure_memory())
    if args.render:
        saved = json.loads(Path(args.render).read_text())
        return render(args, saved["results"], saved["mem"])
    work = work_dir(args.work, "bench_distill_")
    teacher = args.teacher or args.model
    dense, tok, src = models.load(args.model, dtype="float32")
    windows = {t: evaluation_windows(tok, EvaluationConfig(source=t, max_tokens=2048, seq_len=512)) for t in TEXTS}
    train_ids = calibration_batches(tok, CalibrationConfig(num_samples=args.samples, seq_len=args.seq_len, seed=1))
    results = {}
    if args.teacher:
        t_model, _, _ = models.load(teacher, dtype="float32")
        results[f"teacher ({teacher})"] = {"ppl": ppl_by_text(t_model, windows), "params": count_parameters(t_model)}
        del t_model
        results["student, untrained"] = {"ppl": ppl_by_text(dense, windows), "params": count_parameters(dense)}
        pruned = dense
    else:
        prune_ids = calibration_batches(tok, CalibrationConfig(num_samples=64, seq_len=512, seed=0))
        results["dense"] = {"ppl": ppl_by_text(dense, windows), "params": count_parameters(dense)}
        pruned = copy.deepcopy(dense)
        apply_structured(pruned, StructuredPruneConfig(mlp_ratio=args.mlp_ratio),
                         Context(tokenizer=tok, calibration=lambda: prune_ids))
        results["pruned"] = {"ppl": ppl_by_text(pruned, windows), "params": count_parameters(pruned)}
        del dense

    tps = args.batch * args.seq_len
    evals = sorted({max(1, args.steps // 3), max(1, 2 * args.steps // 3), args.steps})
    common = dict(teacher=teacher, teacher_dtype=args.teacher_dtype, max_steps=args.steps, batch_size=args.batch,
                  learning_rate=args.lr, lr_scheduler="cosine", warmup_steps=max(1, args.steps // 10),
                  mixed_precision=args.precision, logging_steps=max(1, args.steps // 6), seed=0)
    def cached(kw):  # the cache stores the teacher at the distillation temperature: one per temperature
        corrected = "-corrected" if kw.get("teacher_correction_steps") else ""
        return dict(top_k=args.top_k, cache_dir=str(work / f"cache-T{kw.get('temperature', 1.0)}{corrected}"))

    variants = []
    for key, (label, kw) in VARIANTS.items():
        if key not in args.variants.split(","):
            continue
        kw = dict(kw)
        if kw.pop("correct", False):
            kw["teacher_correction_steps"] = args.correction_steps or args.steps
        variants.append((label, {**kw, **(cached(kw) if kw.get("top_k", 1) else {})}))
    for label, kw in variants:
        print(f"[{args.model}] {label} ...", flush=True)
        student = copy.deepcopy(pruned)
        cb = EvalAt(evals, windows, tps)
        ctx = Context(tokenizer=tok, calibration=lambda: train_ids, callbacks=[cb])
        apply_distill(student, DistillConfig(**common, **kw), ctx)
        n = ctx.notes["distill"]
        results[label] = {"ppl": cb.curve[-1], "curve": cb.curve, "train_seconds": n["train_seconds"],
                          "tokens": n["tokens"], "cache_seconds": n.get("cache_seconds"),
                          "temperature": kw.get("temperature", 1.0),
                          **({"teacher_correction": n["teacher_correction"]} if "teacher_correction" in n else {})}
        del student
    (work / "results.json").write_text(json.dumps(results, indent=2, default=str))

    # glibc would otherwise serve the chunk temporaries from a heap it never trims (its mmap threshold
    # grows with every freed block), and RSS would report freed memory as used.
    mem = {} if args.skip_memory else measure_memory()
    (work / "results.json").write_text(json.dumps({"results": results, "mem": mem}, indent=2, default=str))
    if args.work:
        print(f"raw results: {work / 'results.json'}")
    render(args, results, mem)


def measure_memory() -> dict:
    return {mode: run_child([this_python(), str(ROOT / "scripts/anchors/loss_memory.py"), mode],
                            env={"MALLOC_MMAP_THRESHOLD_": "1048576"})
            for mode in ("naive", "chunked", "chunked-topk")}


MEMORY_NOTE = (
    "Peak memory of one loss step (forward + backward of the loss alone on 2048 tokens x 49152 vocab; "
    "inputs not counted: the student's logits as a non-leaf float32 tensor with its gradient's destination, "
    "the teacher's logits in bfloat16 or its top-32 with the log-mass of the rest; chunks of 128 tokens, the gradient written into the "
    "logits' memory as the trainer does; each mode in its own process with MALLOC_MMAP_THRESHOLD_=1048576 "
    "so freed blocks leave RSS; target <= 0.25 of naive)")


def memory_table(mem: dict) -> None:
    naive = mem["naive"]["growth_mb"]
    rows = [f"| {m} | {v['growth_mb']:.0f} | {v['growth_mb'] / naive:.3f} | {v['seconds']:.2f} |" for m, v in mem.items()]
    table = ("## Distillation: memory of one loss step\n\n"
             f"`python scripts/bench_distill.py --memory-only` (one run; {machine()}). {MEMORY_NOTE}.\n\n"
             "| loss step | peak growth (MB) | vs naive | seconds |\n|---|---|---|---|\n" + "\n".join(rows) + "\n")
    print(table)
    write_section("distill_memory", table)


def render(args, results: dict, mem: dict) -> None:
    tps = args.batch * args.seq_len
    ce = results["cross-entropy only"]["ppl"]
    fixed = [k for k in results if "curve" not in results[k]]  # teacher / dense / untrained / pruned rows
    rows = []
    for label, r in results.items():
        p = r["ppl"]
        cells = " | ".join(f"{p[t]:.2f}" for t in TEXTS)
        ratio = " | ".join(f"{p[t] / ce[t]:.3f}" if label not in fixed else "-" for t in TEXTS)
        curve = ", ".join(f"{c['tokens'] // 1000}k: {c['wiki_eval']:.2f}" for c in r.get("curve", []))
        speed = f"{r['tokens'] / r['train_seconds']:.0f}" if "train_seconds" in r else "-"
        rows.append(f"| {label} | {cells} | {ratio} | {curve or '-'} | {speed} |")
    builds = {(r.get("temperature", 1.0), "teacher_correction" in r): r["cache_seconds"]
              for r in results.values() if r.get("cache_seconds")}
    cache_s = ", ".join(f"T={t:g}{', corrected teacher' if c else ''}: {s:.1f} s"
                        for (t, c), s in sorted(builds.items())) or "-"
    corrections = [r["teacher_correction"] for r in results.values() if r.get("teacher_correction", {}).get("seconds")]
    correction_s = "".join(
        f" Teacher correction (Minitron): the teacher trained {c['steps']} steps with cross-entropy on the same "
        f"windows in the same order (lr {c['learning_rate']:g}, float32 weights, the students' mixed precision) before its cache was built, in "
        f"{c['seconds']:.0f} s, final training loss {c['train_loss']:.3f}." for c in corrections[:1])
    if args.teacher:
        student_row = results["student, untrained"]
        teacher_row = results[f"teacher ({args.teacher})"]
        title = f"## Distillation: {args.teacher} into {args.model}\n\n"
        setup = (f"Teacher {args.teacher} ({teacher_row['params'] / 1e6:.1f}M parameters, {args.teacher_dtype}); "
                 f"student {args.model} ({student_row['params'] / 1e6:.1f}M), every run from its released weights. ")
    else:
        title = f"## Distillation: recovering {args.model} after removing {args.mlp_ratio:.0%} of its MLP channels\n\n"
        setup = (f"Pruned with `prune_structured` (calibrated activation scores, 64 x 512 tokens), "
                 f"{results['dense']['params'] / 1e6:.1f}M -> {results['pruned']['params'] / 1e6:.1f}M parameters. "
                 "Every student starts from the same pruned weights; teacher: the unpruned model. ")
    cmd = invocation("bench_distill.py")
    table = (
        title + f"`{cmd}` (one run; {machine()}). " + setup +
        f"Each student trains {args.steps} steps of {args.batch} x {args.seq_len} tokens ({args.steps * tps:,} "
        f"tokens; {args.samples} windows of `wiki_calib`, seed 1: {args.steps * args.batch / args.samples:.2f} "
        f"epochs), AdamW lr {args.lr} cosine, mixed precision {args.precision}, same data order; teacher logit "
        f"cache (top-{args.top_k} and the log-mass of the rest) built once per temperature "
        f"({cache_s}).{correction_s} Perplexity on 2048 held-out "
        "tokens of `wiki_eval` (the training domain) and `python_docs` (other text); 'vs CE' is the ratio "
        "to cross-entropy-only training at equal tokens (target <= 0.9); the curve is wiki_eval perplexity "
        "against tokens seen.\n\n"
        "| student | ppl wiki_eval | ppl python_docs | vs CE (wiki) | vs CE (python_docs) | wiki_eval ppl by tokens | train tokens/s |\n"
        "|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n")
    if mem:
        naive = mem["naive"]["growth_mb"]
        mrows = [f"| {m} | {v['growth_mb']:.0f} | {v['growth_mb'] / naive:.3f} | {v['seconds']:.2f} |" for m, v in mem.items()]
        table += (
            "\nPeak memory of one loss step (forward + backward of the loss alone on 2048 tokens x 49152 vocab, "
            "student logits float32 with gradients, teacher logits bfloat16 or its top-32, chunks of 128 tokens; "
            "peak RSS growth over the inputs, each in its own process with MALLOC_MMAP_THRESHOLD_=1048576 so "
            "freed blocks leave RSS; target <= 0.25 of naive):\n\n"
            "| loss step | peak growth (MB) | vs naive | seconds |\n|---|---|---|---|\n" + "\n".join(mrows) + "\n")
    print(table)
    write_section(args.section, table)


if __name__ == "__main__":
    main()
