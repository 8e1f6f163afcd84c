"""bitsandbytes int8 / nf4 / fp4 against bf16 and llmcompress GPTQ int4, side by side.

One run, one table, written to BENCHMARKS.md (section ``bnb``): perplexity (first 2048 tokens
of ``wiki_eval``), memory footprint of the whole model and of the Linear weights alone
(quantization constants included), size on disk and CPU latency (prefill of 512 tokens,
greedy decode of 32), each variant loaded fresh. bitsandbytes' 8-bit matmul is slow on CPU
(the library targets GPUs): its CPU latency is reported, not judged.

Usage: python scripts/bench_bnb.py [--models smollm2-135m qwen2.5-coder-0.5b]
                                   [--gptq-dir MODEL=DIR ...]   (reuse a GPTQ output; else one is made)
"""

from __future__ import annotations

import argparse
import gc

import torch

from _bench import ROOT, machine, run_child, this_python, work_dir, write_section
from llmcompress import models
from llmcompress.data import CalibrationConfig, EvaluationConfig, calibration_batches, evaluation_windows
from llmcompress.evaluate import latency, perplexity
from llmcompress.export import directory_size
from llmcompress.methods.bnb import BnbConfig, load_quantized
from llmcompress.modeling import linear_weight_bytes

GROUP = {"smollm2-135m": 64, "qwen2.5-coder-0.5b": 128}
VARIANTS = {
    "int8": dict(load_in_8bit=True),
    "nf4": dict(load_in_4bit=True, quant_type="nf4", double_quant=True, compute_dtype="bfloat16"),
    "fp4": dict(load_in_4bit=True, quant_type="fp4", double_quant=True, compute_dtype="bfloat16"),
}


def measure(model, windows, size_mb) -> dict:
    ppl, n = perplexity(model, windows)
    lat = latency(model, seq_len=512, decode_tokens=32, repeats=2)
    return {"ppl": ppl, "tokens": n, "footprint_mb": model.get_memory_footprint() / 2**20,
            "linear_mb": linear_weight_bytes(model) / 2**20, "size_mb": size_mb,
            "prefill_ms": lat["prefill_ms"], "decode_tok_s": lat["decode_tokens_per_s"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", nargs="+", default=["smollm2-135m", "qwen2.5-coder-0.5b"])
    ap.add_argument("--gptq-dir", nargs="*", default=[], help="MODEL=DIR of an existing llmcompress GPTQ output")
    ap.add_argument("--samples", type=int, default=64, help="GPTQ calibration windows when a GPTQ output is made")
    ap.add_argument("--work", default=None, help="folder for the outputs, kept (default: a temp folder, removed at exit)")
    args = ap.parse_args()
    given = dict(x.split("=", 1) for x in args.gptq_dir)
    work = work_dir(args.work, "bench_bnb_")
    rows = []
    for alias in args.models:
        _, tok, src = models.load(alias)
        gc.collect()
        windows = evaluation_windows(tok, EvaluationConfig(max_tokens=2048, seq_len=512))
        res = {}
        bf16, _, _ = models.load(src, dtype="bfloat16")
        res["bf16"] = measure(bf16, windows, directory_size(src.path) / 2 / 2**20)  # the fp32 files, halved
        del bf16
        for label, cfg in VARIANTS.items():
            model, _, _ = load_quantized(src, BnbConfig(**cfg))  # saved pristine right after loading
            out = work / f"{alias}-{label}"
            model.save_pretrained(out)  # before any forward: the correct file
            res[label] = measure(model, windows, directory_size(out) / 2**20)
            del model
            gc.collect()
        gdir = given.get(alias)
        if gdir is None:
            ids = calibration_batches(tok, CalibrationConfig(num_samples=args.samples, seq_len=512))
            torch.save(ids, work / "ids.pt")
            gdir = str(work / f"{alias}-gptq")
            run_child([this_python(), str(ROOT / "scripts/anchors/llmcompress_quantize.py"), "gptq", str(src.path),
                       str(work / "ids.pt"), str(GROUP[alias]), gdir])
        from transformers import AutoModelForCausalLM

        gmodel = AutoModelForCausalLM.from_pretrained(gdir, dtype=torch.bfloat16).eval()
        res["GPTQ int4 (compressed-tensors)"] = measure(gmodel, windows, directory_size(gdir) / 2**20)
        del gmodel
        base = res["bf16"]
        for label, r in res.items():
            rows.append(f"| {alias} | {label} | {r['ppl']:.2f} (+{r['ppl'] - base['ppl']:.2f}) | {r['footprint_mb']:.0f} "
                        f"({r['footprint_mb'] / base['footprint_mb']:.2f}) | {r['linear_mb']:.0f} "
                        f"({r['linear_mb'] / base['linear_mb']:.2f}) | {r['size_mb']:.0f} | {r['prefill_ms']:.0f} | "
                        f"{r['decode_tok_s']:.1f} |")
    table = (
        "## bitsandbytes against bf16 and GPTQ int4\n\n"
        f"`python scripts/bench_bnb.py` (one run; {machine()}). Perplexity on the first 2048 tokens of `wiki_eval` "
        "(512-token windows; in brackets the increase over bf16). Footprint: `get_memory_footprint()`; "
        "Linear: the bytes of the Linear weights with their quantization constants (lm_head / embeddings "
        "excluded), ratio to bf16 in brackets. bf16 size on disk is half the fp32 checkpoint. GPTQ int4 is "
        "decompressed to dense bf16 by transformers on load, so its footprint is bf16's: its saving is on "
        "disk and in vLLM. CPU latency: prefill of 512 tokens, greedy decode of 32 tokens.\n\n"
        "| model | format | perplexity | footprint MB | Linear MB | size on disk MB | prefill ms | decode tok/s |\n"
        "|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n")
    print(table)
    write_section("bnb", table)


if __name__ == "__main__":
    main()
