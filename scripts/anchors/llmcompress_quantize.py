"""llmcompress GPTQ or RTN in a child process (so that its peak memory is its own).
Prints one JSON line. Used by bench_gptq.py.

Usage: python llmcompress_quantize.py METHOD MODEL_DIR IDS.pt GROUP_SIZE OUT_DIR
"""

import json
import logging
import sys
import time

import torch

from llmcompress import export, load_model
from llmcompress.context import Context
from llmcompress.methods.gptq import GPTQConfig
from llmcompress.methods.rtn import RTNConfig
from llmcompress.registry import get_method
from _mem import status_mb  # noqa: E402  (scripts/anchors/_mem.py)



logging.basicConfig(level=logging.WARNING)
method, model_dir, ids_path, group_size, out_dir = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
t_start = time.perf_counter()
ids = torch.load(ids_path)
model, tok, _ = load_model(model_dir, dtype="float32")
if method == "gptq":
    stage = GPTQConfig(bits=4, group_size=group_size, act_order=True, damp=0.01, block_size=128)  # defaults: mse observer, bf16 forwards
else:
    stage = RTNConfig(bits=4, group_size=group_size)
t0 = time.perf_counter()
# The calibration ids are the ones llm-compressor gets (same windows, same order).
ctx = Context(tokenizer=tok, device=torch.device("cpu"), calibration=lambda: ids)
get_method(stage.METHOD).apply(model, stage, ctx)
quantize_s = time.perf_counter() - t0
export.save(model, tok, out_dir, overwrite=True)
print(json.dumps({"quantize_s": quantize_s, "process_s": time.perf_counter() - t_start,
                  "peak_rss_mb": status_mb("VmHWM")}))
