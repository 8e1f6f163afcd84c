"""Prove that llmcompress's GPTQ v1 checkpoints load through transformers + optimum + GPTQModel.

GPTQModel pins numpy and compiles kernels, so it lives in its own virtual environment
(default .dev/gq: `python3 -m venv .dev/gq && .dev/gq/bin/pip install torch==2.13.0
gptqmodel==7.6.0 optimum transformers==5.24.0`). This script quantizes a model with
llmcompress (GPTQ int4, v1 format), then loads the output there with plain
``AutoModelForCausalLM.from_pretrained`` and compares its logits with the in-memory model's.

Usage: python scripts/check_gptq_v1_reload.py [--model smollm2-135m] [--group-size 64] [--samples 32]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
from pathlib import Path

import torch

from _bench import ROOT, machine, write_section
from llmcompress import CalibrationConfig, EvaluationConfig, Recipe, compress
from llmcompress.data import evaluation_windows
from llmcompress.evaluate import perplexity
from llmcompress.methods.gptq import GPTQConfig
from llmcompress.recipe import OutputConfig
from llmcompress.verify import reference_ids

CHILD = r'''
import math, sys, torch
from transformers import AutoModelForCausalLM
m = AutoModelForCausalLM.from_pretrained(sys.argv[1], device_map="cpu", dtype=torch.float32).eval()
nll = n = 0
with torch.no_grad():
    out = m(torch.load(sys.argv[2])).logits.float()
    for w in torch.load(sys.argv[4]):
        lg = m(w[None]).logits[0, :-1].float()
        nll += torch.nn.functional.cross_entropy(lg, w[1:], reduction="sum").item()
        n += len(w) - 1
torch.save(out, sys.argv[3])
print(type(m.model.layers[0].mlp.down_proj).__name__, math.exp(nll / n))
'''


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--venv", default=str(ROOT / ".dev" / "gq"))
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gptq_v1_"))
    recipe = Recipe(stages=[GPTQConfig(bits=4, group_size=args.group_size)], name="v1",
                    calibration=CalibrationConfig(num_samples=args.samples, seq_len=512), output=OutputConfig(format="gptq"))
    res = compress(args.model, recipe, work / "out", evaluation=False)
    ids = reference_ids(res.model.config.vocab_size)
    with torch.no_grad():
        ref = res.model(ids).logits.float()
    torch.save(ids, work / "ids.pt")
    windows = evaluation_windows(res.tokenizer, EvaluationConfig(max_tokens=2048, seq_len=512))
    torch.save(windows, work / "windows.pt")
    ppl_ours = perplexity(res.model, windows)[0]
    proc = subprocess.run([str(Path(args.venv) / "bin" / "python"), "-c", CHILD, str(work / "out"), str(work / "ids.pt"),
                           str(work / "logits.pt"), str(work / "windows.pt")], capture_output=True, text=True,
                          env={**os.environ, "GPTQMODEL_CPU_WORKERS": "2", "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""})
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    got = torch.load(work / "logits.pt")
    diff = (got - ref).abs().max().item()
    agree = (got.argmax(-1) == ref.argmax(-1)).float().mean().item()
    kernel, ppl_loaded = proc.stdout.strip().splitlines()[-1].split()
    line = (f"{args.model}: GPTQ v1 checkpoint loaded by transformers + optimum + GPTQModel ({kernel}). "
          f"Perplexity on 2048 wiki_eval tokens: in memory {ppl_ours:.4f}, reloaded {float(ppl_loaded):.4f}. "
          f"On 64 random tokens: max |logit diff| {diff:.4g} (logit scale {ref.abs().max().item():.3g}), "
          f"top-1 agreement {agree:.4f}.")
    print(line)
    write_section("gptq_v1", "## GPTQ v1 checkpoints in GPTQModel\n\n"
                  f"`python scripts/check_gptq_v1_reload.py` ({machine()}; GPTQModel 7.6.0 + optimum in `.dev/gq`; "
                  f"GPTQ int4 g{args.group_size}, {args.samples} x 512 calibration tokens): {line} The kernel computes "
                  "in reduced precision, so single logits on random tokens move while perplexity on text agrees.")


if __name__ == "__main__":
    main()
