"""llmcompress pruning in a child process (so that its time and peak memory are its own).
Prints one JSON line. Used by bench_prune.py.

Usage: python llmcompress_prune.py STAGE_JSON MODEL_DIR IDS.pt OUT_DIR
(STAGE_JSON: one recipe stage, e.g. '{"method": "wanda", "pattern": "2:4"}')
"""

import json
import logging
import sys
import time

import torch

from llmcompress import export, load_model
from llmcompress.context import Context
from llmcompress.recipe import Recipe
from llmcompress.registry import get_method
from _mem import status_mb  # noqa: E402  (scripts/anchors/_mem.py)



logging.basicConfig(level=logging.WARNING)
stage_json, model_dir, ids_path, out_dir = sys.argv[1:5]
stage = Recipe.from_dict({"stages": [json.loads(stage_json)]}).stages[0]
t_start = time.perf_counter()
ids = torch.load(ids_path)
model, tok, _ = load_model(model_dir, dtype="float32")
t0 = time.perf_counter()
# The calibration ids are the ones llm-compressor gets (same windows, same order).
ctx = Context(tokenizer=tok, device=torch.device("cpu"), calibration=lambda: ids)
model = get_method(stage.METHOD).apply(model, stage, ctx) or model
prune_s = time.perf_counter() - t0
export.save(model, tok, out_dir, overwrite=True)
print(json.dumps({"prune_s": prune_s, "process_s": time.perf_counter() - t_start,
                  "peak_rss_mb": status_mb("VmHWM"),
                  "notes": {k: v for k, v in ctx.notes.items() if k in ("prune_structured", "owl")}}))
