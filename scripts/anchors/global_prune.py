"""Global 50% magnitude pruning of a model's Linear layers (lm_head kept) in a child process,
by llmcompress or by torch.nn.utils.prune.global_unstructured; prints one JSON line with the
time, the peak RSS and a fingerprint of the result. Used by bench_prune.py.

Usage: python global_prune.py {llmcompress|llmcompress-materialized|torch} MODEL_DIR SPARSITY
(``-materialized`` first copies every weight into fresh memory, outside the timed region, so the
timing excludes the first-write cost of the memory transformers loaded the weights into)
"""

import json
import sys
import time

import torch
from transformers import AutoModelForCausalLM

tool, model_dir, sparsity = sys.argv[1], sys.argv[2], float(sys.argv[3])
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
linears = [m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"]
import torch.nn.utils.prune as prune  # noqa: E402  (imports stay outside the timed region)

from llmcompress.methods.prune import PruneConfig, apply_prune  # noqa: E402
from _mem import reset_peak, status_mb  # noqa: E402  (scripts/anchors/_mem.py)

if tool.endswith("-materialized"):
    for p in model.parameters():
        p.data = p.data.clone()
for p in model.parameters():
    p.data.sum()  # page the (memory-mapped) weights in, so the growth below is scratch memory only
rss_loaded = status_mb("VmRSS")
reset_peak()  # the peak below is reached while pruning, not while loading or copying
t0 = time.perf_counter()
if tool == "torch":
    prune.global_unstructured([(m, "weight") for m in linears], pruning_method=prune.L1Unstructured, amount=sparsity)
    for m in linears:
        prune.remove(m, "weight")  # fold the mask in: no weight_orig / weight_mask left
else:
    apply_prune(model, PruneConfig(sparsity=sparsity, scope="global"))
seconds = time.perf_counter() - t0
zeros = sum(int((m.weight == 0).sum()) for m in linears)
kept_min = min(m.weight[m.weight != 0].abs().min().item() for m in linears)
print(json.dumps({"seconds": seconds, "peak_rss_mb": status_mb("VmHWM"),
                  "rss_after_load_mb": rss_loaded, "zeros": zeros, "smallest_kept": kept_min}))
