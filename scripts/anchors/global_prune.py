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


def _status_mb(field: str) -> float:
    """A /proc/self/status memory field in MB. VmHWM is this process's own peak: unlike
    getrusage's ru_maxrss, it does not inherit the parent's peak across fork + exec."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


if tool.endswith("-materialized"):
    for p in model.parameters():
        p.data = p.data.clone()
for p in model.parameters():
    p.data.sum()  # page the (memory-mapped) weights in, so the growth below is scratch memory only
rss_loaded = _status_mb("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset VmHWM: the peak below is reached while pruning, not while loading or copying
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
print(json.dumps({"seconds": seconds, "peak_rss_mb": _status_mb("VmHWM"),
                  "rss_after_load_mb": rss_loaded, "zeros": zeros, "smallest_kept": kept_min}))
