"""Measurements: perplexity, size, parameters, sparsity, memory, latency.

Perplexity is computed on consecutive, non-overlapping windows of held-out text
(``data.evaluation_windows``), averaging the next-token negative log-likelihood over
every predicted token; the number of tokens is reported with it. Latencies are
labelled with the device they were measured on and are medians of repeated runs.
"""

from __future__ import annotations

import logging
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, field

import torch
from tqdm.auto import tqdm

from .modeling import count_parameters, model_device, zero_fraction

logger = logging.getLogger(__name__)


def device_label(device: torch.device | str | None = None) -> str:
    """Human-readable name of where something ran (GPU model, or CPU with core count)."""
    device = torch.device(device or "cpu")
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (torch {torch.__version__})"
    return f"CPU {platform.machine()} x{os.cpu_count()} threads={torch.get_num_threads()} (torch {torch.__version__})"


@torch.no_grad()
def perplexity(model, windows: torch.Tensor, batch_size: int = 1, desc: str = "perplexity") -> tuple[float, int]:
    """Perplexity over ``windows`` ``[n, seq_len]``; returns ``(ppl, tokens_scored)``."""
    device = model_device(model)
    nll, count = 0.0, 0
    for i in tqdm(range(0, len(windows), batch_size), desc=desc, unit="window", leave=False):
        ids = windows[i : i + batch_size].to(device)
        logits = model(ids).logits[:, :-1].float()
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum")
        nll += loss.item()
        count += ids[:, 1:].numel()
    return math.exp(nll / count), count


def _sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def latency(model, seq_len: int = 512, decode_tokens: int = 32, repeats: int = 3, vocab: int | None = None) -> dict:
    """Prefill latency (ms, one sequence of ``seq_len``) and greedy decode speed (tokens/s).

    Decoding runs ``decode_tokens`` steps with the KV cache from a 16-token prompt; both
    are medians over ``repeats`` runs after one warm-up.
    """
    device = model_device(model)
    vocab = vocab or model.config.vocab_size
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (1, seq_len), generator=gen).to(device)
    prompt = ids[:, :16]

    def timed(fn):
        times = []
        for i in range(repeats + 1):
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            if i:  # first run is warm-up
                times.append(time.perf_counter() - t0)
        return sorted(times)[len(times) // 2]

    prefill = timed(lambda: model(ids))
    pad = getattr(model.generation_config, "pad_token_id", None) or getattr(model.config, "eos_token_id", 0)
    if isinstance(pad, list):
        pad = pad[0]
    decode = timed(lambda: model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=decode_tokens,
                                          min_new_tokens=decode_tokens, do_sample=False, pad_token_id=pad))
    return {"prefill_ms": prefill * 1000, "prefill_tokens": seq_len,
            "decode_tokens_per_s": decode_tokens / decode, "decode_tokens": decode_tokens}


@dataclass
class Measurement:
    """One column of a before/after report."""

    label: str
    perplexity: float | None = None
    eval_tokens: int | None = None
    eval_source: str | None = None
    parameters: int | None = None
    zero_fraction: float | None = None
    memory_footprint_mb: float | None = None
    size_on_disk_mb: float | None = None
    prefill_ms: float | None = None
    decode_tokens_per_s: float | None = None
    device: str | None = None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def measure(model, label: str, windows: torch.Tensor | None = None, eval_cfg=None,
            size_on_disk: int | None = None) -> Measurement:
    """Every measurement of one model (``windows`` None: perplexity skipped)."""
    m = Measurement(label=label)
    m.parameters = count_parameters(model)
    m.zero_fraction = zero_fraction(model)
    m.memory_footprint_mb = model.get_memory_footprint() / 2**20
    m.device = device_label(model_device(model))
    if size_on_disk is not None:
        m.size_on_disk_mb = size_on_disk / 2**20
    if windows is not None:
        bs = eval_cfg.batch_size if eval_cfg is not None else 1
        m.perplexity, m.eval_tokens = perplexity(model, windows, bs, desc=f"perplexity ({label})")
        m.eval_source = eval_cfg.source if eval_cfg is not None else None
    if eval_cfg is None or eval_cfg.latency:
        lat = latency(model, seq_len=eval_cfg.seq_len if eval_cfg else 512,
                      decode_tokens=eval_cfg.decode_tokens if eval_cfg else 32)
        m.prefill_ms, m.decode_tokens_per_s = lat["prefill_ms"], lat["decode_tokens_per_s"]
    return m
