"""Peak memory of one distillation loss step (forward + backward of the loss alone), for
bench_distill.py. Prints one JSON line. Usage: python loss_memory.py naive|chunked|chunked-topk

Inputs (not counted): the student's logits, a non-leaf like a model's output, the buffer their
gradient accumulates into, and the teacher's logits (full bf16, or top-32 with the log-mass of the
rest, as the cache stores them)."""

import json
import sys
import time

import torch
import torch.nn.functional as F

from llmcompress.methods.distill.losses import distill_loss
from _mem import status_mb  # noqa: E402  (scripts/anchors/_mem.py)

mode = sys.argv[1]
N, V, K = 2048, 49152, 32
CHUNK = 128
torch.manual_seed(0)
leaf = torch.randn(N, V, requires_grad=True)
leaf.grad = torch.zeros_like(leaf)  # where the gradient ends up (lm_head's side): part of the inputs
# The student's logits: a non-leaf, as a model's output is. A view, so that the harness adds no
# full-size tensor of its own in backward (a model's lm_head backward allocates none either).
s = leaf.view(N, V)
t = torch.randn(N, V).bfloat16()
# top-32 and the cache's tail (log of the teacher's probability outside them), row block by row block:
# a full-size float32 temporary here would raise the process's peak before the measurement starts
tv, ti, tail = [], [], []
for rows in t.split(256):
    top = torch.topk(rows.float(), K, dim=-1)
    tv.append(top.values.half())
    ti.append(top.indices.int())
    tail.append(torch.log1p(-torch.softmax(rows.float(), -1).gather(-1, top.indices).sum(-1)))
tv, ti, tail = torch.cat(tv), torch.cat(ti), torch.cat(tail)
base = status_mb("VmRSS")
t0 = time.perf_counter()
if mode == "naive":
    loss = F.kl_div(F.log_softmax(s.float(), -1), F.log_softmax(t.float(), -1), log_target=True, reduction="batchmean")
elif mode == "chunked":
    loss = distill_loss(s, t, chunk_size=CHUNK, reuse_logits=True)  # as the trainer calls it
else:
    loss = distill_loss(s, tv, t_indices=ti, t_tail=tail, chunk_size=CHUNK, reuse_logits=True)
loss.backward()
seconds = time.perf_counter() - t0
peak = status_mb("VmHWM")
print(json.dumps({"growth_mb": peak - base, "seconds": seconds, "loss": float(loss.detach())}))
