"""Which GPTQ setting moves perplexity on which text: one model, one option changed at a time.

Starts from the settings of ``bench_gptq.py`` (int4 symmetric, group 128, act-order with static
groups, MSE clipping, dampening 0.01, true-sequential, ``wiki_calib`` windows) and changes one
thing per row; RTN and bitsandbytes nf4 (no calibration) are the references. Every variant is
quantized in this process from the same loaded weights and evaluated in memory on the same
held-out windows (the in-memory quantized model and its reloaded checkpoint give equal logits:
tests/integration/test_smollm2_gptq.py). One run, one table, BENCHMARKS.md section
``gptq_ablation``.

Usage: python scripts/bench_gptq_ablation.py [--model qwen2.5-coder-0.5b] [--samples 64]
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from _bench import invocation, machine, nf4_ppl, ppl_by_text, write_section
from llmcompress import models
from llmcompress.calibration import resolve_calibration_dtype
from llmcompress.context import Context
from llmcompress.data import CalibrationConfig, EvaluationConfig, calibration_batches, evaluation_windows
from llmcompress.methods.gptq import GPTQConfig
from llmcompress.methods.rtn import RTNConfig
from llmcompress.registry import get_method

TEXTS = ("wiki_eval", "python_docs")
# (label, GPTQ options changed from the base, calibration source)
BLEND = "wiki_calib+python_code"  # half the windows from each text
BASE_DTYPE = str(resolve_calibration_dtype("fast", "cpu")).removeprefix("torch.")
OTHER_DTYPE = "float32" if BASE_DTYPE == "bfloat16" else "bfloat16"
VARIANTS = [
    ("GPTQ, base settings", {}, "wiki_calib"),
    ("dampening 0.1", {"damp": 0.1}, "wiki_calib"),
    ("no act-order", {"act_order": False}, "wiki_calib"),
    ("not true-sequential (one pass per layer)", {"true_sequential": False}, "wiki_calib"),
    ("minmax scales (no clipping search)", {"observer": "minmax"}, "wiki_calib"),
    ("minmax scales, no act-order", {"observer": "minmax", "act_order": False}, "wiki_calib"),
    ("group 64", {"group_size": 64}, "wiki_calib"),
    ("GPTAQ (gptaq_alpha 0.5, gptaq_damp 0.1)", {"gptaq_alpha": 0.5}, "wiki_calib"),
    ("GPTAQ, no act-order", {"gptaq_alpha": 0.5, "act_order": False}, "wiki_calib"),
    # the dtype that the default (`fast`) does not pick on this machine
    (f"calibration forwards in {OTHER_DTYPE} (not {BASE_DTYPE})", {"calibration_dtype": OTHER_DTYPE}, "wiki_calib"),
    ("calibrated on python_code", {}, "python_code"),
    (f"calibrated on {BLEND}", {}, BLEND),
    ("asymmetric (zero point per group)", {"sym": False}, "wiki_calib"),
    ("asymmetric, minmax scales", {"sym": False, "observer": "minmax"}, "wiki_calib"),
    ("asymmetric, group 64", {"sym": False, "group_size": 64}, "wiki_calib"),
    (f"asymmetric, group 64, {BLEND}", {"sym": False, "group_size": 64}, BLEND),
    (f"asymmetric, group 64, minmax scales, {BLEND}", {"sym": False, "group_size": 64, "observer": "minmax"}, BLEND),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--samples", type=int, default=64, help="calibration windows of 512 tokens")
    ap.add_argument("--group", type=int, default=128)
    ap.add_argument("--eval-tokens", type=int, default=8192)
    ap.add_argument("--section", default="gptq_ablation")
    ap.add_argument("--only", default="", help="comma-separated label beginnings: run only the GPTQ rows whose label starts with one "
                    "(and the base row), without the RTN / nf4 references")
    args = ap.parse_args()
    base_model, tok, src = models.load(args.model, dtype="float32")
    windows = {t: evaluation_windows(tok, EvaluationConfig(source=t, max_tokens=args.eval_tokens, seq_len=512))
               for t in TEXTS}
    res = {"original": {"ppl": ppl_by_text(base_model, windows, "original")}}

    def run(label, stage, source):
        ids = calibration_batches(tok, CalibrationConfig(source=source, num_samples=args.samples, seq_len=512, seed=0))
        model = copy.deepcopy(base_model)
        t0 = time.perf_counter()
        get_method(stage.METHOD).apply(model, stage, Context(tokenizer=tok, device=torch.device("cpu"),
                                                             calibration=lambda: ids))
        seconds = time.perf_counter() - t0
        # Bits per weight as a 16-bit checkpoint stores them: the codes, a 16-bit scale and (asymmetric)
        # a zero point of the codes' width per group.
        bits = stage.bits + (16 + (0 if stage.sym else stage.bits)) / stage.group_size
        res[label] = {"ppl": ppl_by_text(model, windows, label), "seconds": seconds, "bits": bits}
        print(label, res[label], flush=True)

    only = [w.strip() for w in args.only.split(",") if w.strip()]
    variants = [v for v in VARIANTS if not only or v[0] == VARIANTS[0][0] or any(v[0].startswith(w) for w in only)]
    for g in sorted({args.group, 64}, reverse=True) if not only else ():
        run(f"RTN group {g}", RTNConfig(bits=4, group_size=g), "wiki_calib")
    for g in sorted({args.group, 64}, reverse=True) if not only else ():
        run(f"RTN group {g}, asymmetric", RTNConfig(bits=4, group_size=g, sym=False), "wiki_calib")
    if not only:
        # nf4: 4-bit codes, an 8-bit absmax per block of 64, a float32 constant per 256 blocks.
        res["bnb nf4 (blocks of 64, double quant)"] = {"ppl": nf4_ppl(src.path, windows),
                                                      "bits": 4 + 8 / 64 + 32 / (64 * 256)}
    for label, options, source in variants:
        if options == {"group_size": args.group}:
            continue  # the base row already
        stage = GPTQConfig(**{"bits": 4, "group_size": args.group, "act_order": True, "damp": 0.01,
                              "block_size": 128, **options})
        run(label, stage, source)
    render(args, res)


def render(args, res):
    base = res["original"]["ppl"]
    rows = []
    for label, r in res.items():
        cells = [f"{r['ppl'][t]:.2f}" + ("" if label == "original" else f" (+{r['ppl'][t] - base[t]:.2f})")
                 for t in TEXTS]
        secs = f"{r['seconds']:.0f}" if "seconds" in r else "-"
        bits = f"{r['bits']:.3f}" if "bits" in r else "-"
        rows.append(f"| {label} | {cells[0]} | {cells[1]} | {bits} | {secs} |")
    table = (
        f"## GPTQ settings one at a time ({args.model})\n\n"
        f"`{invocation('bench_gptq_ablation.py')}` (one run; {machine()}). Base: symmetric int4, group {args.group}, act-order with static groups, MSE "
        f"clipping search, dampening 0.01, true-sequential, {BASE_DTYPE} calibration forwards (the default `fast` on this CPU; float32 Hessian "
        f"products), plain GPTQ (no GPTAQ), {args.samples} "
        "random 512-token windows of `wiki_calib` (seed 0); each GPTQ row changes what its name says "
        f"(`{BLEND}`: half the windows from each text, seed 0). Bits / weight: codes, 16-bit scales (what "
        "a float16 / bfloat16 checkpoint stores) and zero points per weight (bnb: codes, absmax and double-quant "
        "constants). Perplexity on the first "
        f"{args.eval_tokens} tokens of `wiki_eval` and `python_docs`, in brackets the increase over the "
        "original; quantized in memory from the same weights (time in seconds, model load excluded). "
        "Scales stay float32 in memory; a saved asymmetric output goes to the GPTQ v1 format (compressed-tensors' "
        "asymmetric pack-quantized checkpoints do not load in transformers 5.17-5.25), which stores float16 "
        "scales; on 8192 tokens that made no difference beyond run-to-run noise (`bench:gptq_asym`).\n\n"
        "| variant | ppl wiki_eval | ppl python_docs | bits / weight | quantize (s) |\n|---|---|---|---|---|\n"
        + "\n".join(rows) + "\n")
    print(table)
    write_section(args.section, table)


if __name__ == "__main__":
    main()
