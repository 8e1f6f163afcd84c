"""Render scripts/results/gpu_h200.json (written from scripts/gpu_check.py runs) into the
``gpu`` section of BENCHMARKS.md. Each section names the run it came from."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from _bench import ROOT, write_section


def main(path: str = str(ROOT / "scripts/results/gpu_h200.json")):
    r = json.loads(Path(path).read_text())
    s = r["sections"]
    dev = f"{r['device']}, torch {r['torch']}, {r['date']}"
    lines = [f"## GPU checks ({dev})", "",
             f"`{r['command']}`; raw numbers in `scripts/results/gpu_h200.json` (each section notes its run; "
             "every section was measured on the code of this commit or on code it does not touch).", ""]
    g16 = s["gptq_16layer_2048_8192"]["result"]
    ours, lc = g16["llmcompress"], g16["llm-compressor"]
    g8 = s["gptq_llama3_8b_shape"]["result"]
    lines += ["### GPTQ W4A16 (group 128, act-order static, 128 x 512 tokens, random weights, bf16)", "",
              "| model | tool | GPTQ wall (s) | per layer, median (s) | peak GPU memory (MB) |", "|---|---|---|---|---|",
              f"| Llama 16 layers, 2048 / 8192 | llmcompress (layers offloaded to CPU) | {ours['gptq_s']} | "
              f"{ours['per_layer_s_median']} | {ours['peak_gpu_mb']} |",
              f"| Llama 16 layers, 2048 / 8192 | llm-compressor 0.14.0.1 | {lc['gptq_s']} | - | {lc['peak_gpu_mb']} |",
              f"| Llama-3-8B shape (32 layers, 4096 / 14336, GQA 8) | llmcompress (model on GPU) | {g8['gptq_s']} | "
              f"{g8['per_layer_s_median']} | {g8['peak_gpu_mb']} |", "",
              f"Time ratio llmcompress / llm-compressor: **{g16['time_ratio_llmcompress_over_llmcompressor']}** "
              "(target 0.5: missed). Of llmcompress's time, the GPTQ column loop is "
              f"{ours['gptq_maths_s']} s on the 16-layer model and {g8['gptq_maths_s']} s of {g8['gptq_s']} s on the 8B "
              "shape: it is launch-bound even as a CUDA graph (six tiny kernels per column). "
              "llmcompress keeps the calibration hidden states and cached attention outputs of all 128 samples "
              "on the GPU, hence its higher peak memory.", ""]
    ce = s["cuda_equals_cpu"]["result"]
    ge = s["gptq_cuda_graph_equals_eager"]["result"]
    lines += ["### CUDA path against CPU path", "",
              f"- `tests/unit/test_gptq.py -k cuda`: {ce['pytest_tail'][-1]}. On the tiny model the quantized "
              f"logits move from the original by {ce['logit_deviation_cpu']:.2f} (CPU) and {ce['logit_deviation_cuda']:.2f} "
              "(CUDA) (L2 norm); codes themselves differ, because GPTQ's error feedback flips codes on 1e-4-relative "
              "rounding differences while its objective stays equal (see the test's docstring).",
              "- The CUDA-graph column loop is bit-identical to the eager loop: " + ", ".join(
                  f"{k}: identical={v['identical']}, {v['graph_s']} s vs {v['eager_s']} s" for k, v in ge.items()) +
              " (3072 x 2048 weight).", ""]
    bnb = s["bnb_decode_1b_shape"]["result"]
    lines += ["### bitsandbytes on a 1.1B-shaped Llama (16 layers, 2048 / 8192, random weights)", "",
              "| format | decode tokens/s (batch 1, 64 tokens, median of 3) | memory footprint (MB) | peak GPU memory (MB) |",
              "|---|---|---|---|"]
    for k, v in bnb.items():
        lines.append(f"| {k} | {v['decode_tok_s']} | {v['footprint_mb']} | {v['peak_gpu_mb']} |")
    lines += ["", "nf4 holds the weights in 0.33 of bf16's footprint; int8 (LLM.int8) decodes ~3.7x slower than bf16 here.", ""]
    th = s["global_threshold_8b_shape"]["result"]
    lines += ["### Exact global magnitude threshold over Llama-3-8B's Linear weights", "",
              f"{th['weights']:,} bf16 weights, 50% sparsity: best {th['best_s']} s (runs {th['seconds']}), exact "
              f"(count check {th['count_check']}). Target 0.05 s: **missed** by 13x; the streaming pass launches "
              "several kernels and a compaction per tensor. `torch.kthvalue` cannot run at this size on CUDA. "
              "Measured on the revision of `threshold.py` before per-tensor score scales and the tie count were "
              "added; the sampling and the streaming pass are the same (stale until the next GPU run).", ""]
    sp = s["sparse_2of4_matmul"]["result"]
    lines += ["### 2:4 semi-structured sparse matmul against dense bf16 (`to_sparse_semi_structured` + `F.linear`)", "",
              "| backend, weight, tokens | dense (ms) | 2:4 (ms) | speedup |", "|---|---|---|---|"]
    for k, v in sp.items():
        if "error" in v:
            continue
        lines.append(f"| {k} | {v['dense_ms']} | {v['sparse_ms']} | {v['speedup']} |")
    errs = sorted({v['error'] for v in sp.values() if 'error' in v})
    if errs:
        lines += ["", "CUTLASS backend: " + "; ".join(errs)]
    lines += ["", "No 2:4 speedup except on the 8B MLP shapes at 4096 tokens (1.2-1.3x); slower everywhere else. "
              "llmcompress claims no 2:4 speedup.", ""]
    write_section("gpu", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main(*sys.argv[1:])
