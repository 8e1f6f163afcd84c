"""llm-compressor's GPTQ W4A16, run in llm-compressor's own virtual environment (it pins
transformers<=5.17). Used by bench_gptq.py as the anchor; prints one JSON line.

Usage: python llmcompressor_gptq.py MODEL_DIR IDS.pt GROUP_SIZE OUT_DIR
"""

import json
import sys
import time

import torch
from datasets import Dataset
from llmcompressor import oneshot
from llmcompressor.modifiers.quantization import GPTQModifier
from transformers import AutoModelForCausalLM, AutoTokenizer
from _mem import status_mb  # noqa: E402  (scripts/anchors/_mem.py)



model_dir, ids_path, group_size, out_dir = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
t_start = time.perf_counter()
ids = torch.load(ids_path)
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
tok = AutoTokenizer.from_pretrained(model_dir)
ds = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()})
recipe = GPTQModifier(
    config_groups={"group_0": {"targets": ["Linear"], "weights": {
        "num_bits": 4, "type": "int", "symmetric": True, "strategy": "group", "group_size": group_size,
        "actorder": "static"}}},
    ignore=["lm_head"], dampening_frac=0.01, block_size=128)
t0 = time.perf_counter()
oneshot(model=model, dataset=ds, recipe=recipe, num_calibration_samples=len(ids), max_seq_length=ids.shape[1],
        shuffle_calibration_samples=False)
quantize_s = time.perf_counter() - t0
model.save_pretrained(out_dir, save_compressed=True)
tok.save_pretrained(out_dir)
print(json.dumps({"quantize_s": quantize_s, "process_s": time.perf_counter() - t_start,
                  "peak_rss_mb": status_mb("VmHWM")}))
