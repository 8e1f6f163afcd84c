"""llm-compressor's Wanda or SparseGPT, run in llm-compressor's own virtual environment (it pins
transformers<=5.17). Used by bench_prune.py as the anchor; prints one JSON line.

Usage: python llmcompressor_prune.py wanda|sparsegpt MODEL_DIR IDS.pt PATTERN OUT_DIR
(PATTERN: 0.5 for 50% unstructured, or N:M such as 2:4)
"""

import json
import sys
import time

import torch
from datasets import Dataset
from llmcompressor import oneshot
from llmcompressor.modifiers.pruning import WandaPruningModifier
from llmcompressor.modifiers.pruning.sparsegpt import SparseGPTModifier
from transformers import AutoModelForCausalLM, AutoTokenizer
from _mem import status_mb  # noqa: E402  (scripts/anchors/_mem.py)



method, model_dir, ids_path, pattern, out_dir = sys.argv[1:6]
t_start = time.perf_counter()
ids = torch.load(ids_path)
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
tok = AutoTokenizer.from_pretrained(model_dir)
ds = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()})
if ":" in pattern:
    n, m = (int(v) for v in pattern.split(":"))
    kw = {"sparsity": 1 - n / m, "mask_structure": pattern}
else:
    kw = {"sparsity": float(pattern), "mask_structure": "0:0"}
if method == "wanda":
    recipe = WandaPruningModifier(targets=["Linear"], ignore=["lm_head"], **kw)
else:
    recipe = SparseGPTModifier(targets=["Linear"], ignore=["lm_head"], block_size=128, dampening_frac=0.01, **kw)
t0 = time.perf_counter()
oneshot(model=model, dataset=ds, recipe=recipe, num_calibration_samples=len(ids), max_seq_length=ids.shape[1],
        shuffle_calibration_samples=False)
prune_s = time.perf_counter() - t0
# Dense with zeros: compressed-tensors 0.19+ has no sparse compressor any more.
model.save_pretrained(out_dir, save_compressed=False)
tok.save_pretrained(out_dir)
print(json.dumps({"prune_s": prune_s, "process_s": time.perf_counter() - t_start,
                  "peak_rss_mb": status_mb("VmHWM")}))
