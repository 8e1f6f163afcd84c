"""llm-compressor's GPTQ W4A16, run in llm-compressor's own virtual environment (it pins
transformers<=5.17). Used by bench_gptq.py as the anchor; prints one JSON line.

Usage: python llmcompressor_gptq.py MODEL_DIR IDS.pt GROUP_SIZE OUT_DIR [--asym] [--eval WINDOWS.pt]

``--asym``: a zero point per group (its asymmetric pack-quantized output does not load in
transformers 5.17-5.25). ``--eval``: perplexity of the in-memory quantized model on
``{text: windows}``, measured before saving (saving compresses the model); peak memory covers
quantizing and saving, not the evaluation.
"""

import argparse
import json
import time

import torch
from datasets import Dataset
from llmcompressor import oneshot
from llmcompressor.modifiers.quantization import GPTQModifier
from transformers import AutoModelForCausalLM, AutoTokenizer
from _mem import reset_peak, status_mb  # noqa: E402  (scripts/anchors/_mem.py)
from _ppl import ppl_by_text  # noqa: E402

ap = argparse.ArgumentParser()
for name in ("model_dir", "ids", "group_size", "out_dir"):
    ap.add_argument(name)
ap.add_argument("--asym", action="store_true")
ap.add_argument("--eval", default=None)
a = ap.parse_args()
t_start = time.perf_counter()
ids = torch.load(a.ids)
model = AutoModelForCausalLM.from_pretrained(a.model_dir, dtype=torch.float32)
tok = AutoTokenizer.from_pretrained(a.model_dir)
ds = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()})
recipe = GPTQModifier(
    config_groups={"group_0": {"targets": ["Linear"], "weights": {
        "num_bits": 4, "type": "int", "symmetric": not a.asym, "strategy": "group", "group_size": int(a.group_size),
        "actorder": "static"}}},
    ignore=["lm_head"], dampening_frac=0.01, block_size=128)
t0 = time.perf_counter()
oneshot(model=model, dataset=ds, recipe=recipe, num_calibration_samples=len(ids), max_seq_length=ids.shape[1],
        shuffle_calibration_samples=False)
quantize_s = time.perf_counter() - t0
info = {"quantize_s": quantize_s}
peak = status_mb("VmHWM")
if a.eval:
    info["ppl"] = ppl_by_text(model, torch.load(a.eval))
    reset_peak()
model.save_pretrained(a.out_dir, save_compressed=True)
tok.save_pretrained(a.out_dir)
info.update(process_s=time.perf_counter() - t_start, peak_rss_mb=max(peak, status_mb("VmHWM")))
print(json.dumps(info))
