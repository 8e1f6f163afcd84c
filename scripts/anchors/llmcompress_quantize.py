"""llmcompress GPTQ or RTN in a child process (so that its peak memory is its own).
Prints one JSON line. Used by bench_gptq.py.

Usage: python llmcompress_quantize.py METHOD MODEL_DIR IDS.pt GROUP_SIZE OUT_DIR [--asym] [--eval WINDOWS.pt]
       [--scale-dtype float32] [--block-size 64] [--gptaq-alpha 0.5] [--no-act-order] [--observer minmax]

``--asym``: a zero point per group, written in the GPTQ v1 format (float16 scales; quantization
rounds the scales to float16 from the start unless ``--scale-dtype float32`` keeps them in float32
in memory, as llm-compressor does, for a like-for-like in-memory comparison). ``--eval``:
perplexity of the in-memory quantized model on ``{text: windows}`` (for outputs the bench cannot
reload); peak memory is read before it. ``--block-size``: GPTQ's lazy-update block (default 128); it
changes only the order of floating-point sums, so runs that differ in it show how much perplexity
moves from rounding alone. ``--gptaq-alpha``: GPTAQ's asymmetric calibration (0: plain GPTQ).
"""

import argparse
import json
import logging
import time

import torch

from llmcompress import export, load_model
from llmcompress.context import Context
from llmcompress.methods.gptq import GPTQConfig
from llmcompress.methods.quant.gptq_format import FORMAT as GPTQ_FORMAT, SCALE_DTYPE as GPTQ_SCALE_DTYPE
from llmcompress.methods.rtn import RTNConfig
from llmcompress.registry import get_method
from _mem import status_mb  # noqa: E402  (scripts/anchors/_mem.py)
from _ppl import ppl_by_text  # noqa: E402

logging.basicConfig(level=logging.WARNING)
ap = argparse.ArgumentParser()
for name in ("method", "model_dir", "ids", "group_size", "out_dir"):
    ap.add_argument(name)
ap.add_argument("--asym", action="store_true")
ap.add_argument("--eval", default=None)
ap.add_argument("--scale-dtype", choices=("float16", "float32"), default=None)
ap.add_argument("--block-size", type=int, default=128)
ap.add_argument("--gptaq-alpha", type=float, default=0.0)
ap.add_argument("--gptaq-damp", type=float, default=None, help="GPTAQ target dampening (default: the config's)")
ap.add_argument("--no-act-order", action="store_true", help="columns in their own order (groups fitted as reached)")
ap.add_argument("--observer", choices=("mse", "minmax"), default="mse")
ap.add_argument("--refit-scales", choices=("default", "on", "off"), default="default",
                help="refit group scales after the column loop (default: the config's, on with GPTAQ only)")
ap.add_argument("--refit-damp", type=float, default=None, help="the refit's dampening (default: the config's)")
a = ap.parse_args()
t_start = time.perf_counter()
ids = torch.load(a.ids)
model, tok, _ = load_model(a.model_dir, dtype="float32")
sym, g = not a.asym, int(a.group_size)
if a.method == "gptq":
    stage = GPTQConfig(bits=4, group_size=g, sym=sym, act_order=not a.no_act_order, observer=a.observer, damp=0.01,
                       block_size=a.block_size, gptaq_alpha=a.gptaq_alpha, refit_scales={"default": None, "on": True, "off": False}[a.refit_scales],
                       **({} if a.gptaq_damp is None else {"gptaq_damp": a.gptaq_damp}),
                       **({} if a.refit_damp is None else {"refit_damp": a.refit_damp}))  # default: bf16 forwards
else:
    stage = RTNConfig(bits=4, group_size=g, sym=sym)
t0 = time.perf_counter()
# The calibration ids are the ones llm-compressor gets (same windows, same order). Asymmetric
# weights go to the GPTQ v1 format, whose scales are float16: round them so from the start
# (unless --scale-dtype says otherwise; the symmetric default keeps the weight dtype's).
scale_dtype = getattr(torch, a.scale_dtype) if a.scale_dtype else (None if sym else GPTQ_SCALE_DTYPE)
ctx = Context(tokenizer=tok, device=torch.device("cpu"), calibration=lambda: ids, scale_dtype=scale_dtype)
get_method(stage.METHOD).apply(model, stage, ctx)
quantize_s = time.perf_counter() - t0
if sym or scale_dtype == GPTQ_SCALE_DTYPE:
    export.save(model, tok, a.out_dir, overwrite=True, options=None if sym else {"format": GPTQ_FORMAT})
# else: float32 scales for an in-memory comparison only; the v1 writer refuses scales it would round
info = {"quantize_s": quantize_s, "process_s": time.perf_counter() - t_start, "peak_rss_mb": status_mb("VmHWM")}
if a.eval:
    info["ppl"] = ppl_by_text(model, torch.load(a.eval))
print(json.dumps(info))
