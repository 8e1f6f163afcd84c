"""The only place that knows where decoder layers and Linear layers live.

Supported: decoder-only transformers whose ``XForCausalLM`` holds ``model.layers`` of
decoder layers with ``self_attn.{q,k,v,o}_proj`` and ``mlp.{gate,up,down}_proj`` (Llama,
Mistral, Qwen2/3, Gemma 1-3, OLMo 1/2, Granite, SmolLM3).
Methods ask this module for layers and never reach into ``model.model.layers``.
"""

from __future__ import annotations

import re
from typing import Iterable

import torch
from torch import nn

from .errors import ModelLoadError

SUPPORTED_MODEL_TYPES = (
    "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text",
    "olmo", "olmo2", "granite", "smollm3",
)

# True-sequential order inside a decoder layer (GPTQ paper, App. A): a group is
# quantized only after the groups before it, with inputs that already see their error.
SEQUENTIAL_GROUPS = (
    ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    ("self_attn.o_proj",),
    ("mlp.gate_proj", "mlp.up_proj"),
    ("mlp.down_proj",),
)

# Once this Linear is final, these submodules compute final outputs (their inputs and weights
# no longer change while the layer is calibrated): the calibration engine may replay those
# outputs instead of recomputing them. Attention, and the norms that read only the residual
# stream and attention's output (Gemma 2/3 and OLMo 2 normalize attention's output itself).
FINAL_AFTER = {
    "self_attn.o_proj": ("self_attn", "post_attention_layernorm", "pre_feedforward_layernorm"),
    "mlp.down_proj": ("mlp",),
}
# Submodules whose output is one Linear's output (attention returns it with None attention
# weights under SDPA): once that Linear is final, the engine gets the submodule's output from
# the Linear's kept inputs in one matmul (it checks the first batch against the real forward).
OUTPUT_LINEAR = {"self_attn": "self_attn.o_proj", "mlp": "mlp.down_proj"}
# Final from the start: the layer's own input never changes while it is calibrated and norms
# are never compressed, so the first norm is computed once per batch instead of on every pass.
FINAL_FROM_START = ("input_layernorm",)

DEFAULT_IGNORE = ("lm_head",)


def check_supported(config, spec: str) -> None:
    """Raise ModelLoadError unless the architecture is one the toolkit handles."""
    if config is None:
        return
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        archs = ", ".join(getattr(config, "architectures", None) or []) or "unknown"
        raise ModelLoadError(
            f"model '{spec}' has model_type '{model_type}' ({archs}), which llmcompress does "
            f"not support. Supported decoder-only types: {', '.join(SUPPORTED_MODEL_TYPES)}."
        )


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers of a supported causal LM."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ModelLoadError(f"{type(model).__name__} has no model.layers: architecture not supported")
    return layers


def decoder_layer_prefix(model: nn.Module) -> str:
    """Module-name prefix of layer i is ``f"{prefix}.{i}"``."""
    decoder_layers(model)
    return "model.layers"


def matches(name: str, patterns: Iterable[str]) -> bool:
    """Does a module name match any pattern?

    A pattern is a suffix on a dot boundary (``down_proj``, ``mlp.down_proj``,
    ``model.layers.3.mlp.down_proj``) or, with a ``re:`` prefix, a regular expression
    searched in the full name.
    """
    for pat in patterns:
        if pat.startswith("re:"):
            if re.search(pat[3:], name):
                return True
        elif name == pat or name.endswith("." + pat):
            return True
    return False


def linear_layers(
    model: nn.Module, targets: Iterable[str] | None = None, ignore: Iterable[str] = DEFAULT_IGNORE
) -> dict[str, nn.Linear]:
    """Named ``nn.Linear`` modules selected by ``targets`` (None: all) minus ``ignore``."""
    targets = list(targets) if targets else None
    ignore = list(ignore)
    out = {}
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.Linear):
            continue
        if targets is not None and not matches(name, targets):
            continue
        if matches(name, ignore):
            continue
        out[name] = mod
    return out


def sequential_groups(layer: nn.Module) -> list[list[tuple[str, nn.Linear]]]:
    """The Linear layers of one decoder layer, grouped in true-sequential order.

    Linear layers that are not in the known groups come last, one group.
    """
    named = {n: m for n, m in layer.named_modules() if isinstance(m, nn.Linear)}
    groups, seen = [], set()
    for group in SEQUENTIAL_GROUPS:
        members = [(n, named[n]) for n in group if n in named]
        if members:
            groups.append(members)
            seen.update(n for n, _ in members)
    rest = [(n, m) for n, m in named.items() if n not in seen]
    if rest:
        groups.append(rest)
    return groups


def finished_submodules(layer: nn.Module, linear_name: str | None = None) -> list[str]:
    """Names of the submodules of ``layer`` whose outputs are final once ``linear_name`` is; with
    None, those final before anything in the layer changes."""
    names = FINAL_FROM_START if linear_name is None else FINAL_AFTER.get(linear_name, ())
    present = dict(layer.named_modules())
    return [n for n in names if n in present]


def _logical_numel(p: torch.Tensor) -> int:
    # bitsandbytes 4-bit parameters hold two weights per byte; count the weights.
    state = getattr(p, "quant_state", None)
    shape = getattr(state, "shape", None)
    return int(torch.Size(shape).numel()) if shape is not None else p.numel()


def count_parameters(model: nn.Module) -> int:
    """Parameters (weights, not storage elements) of the model, counting tied weights once."""
    seen, total = set(), 0
    for p in model.parameters():
        if p.data_ptr() in seen:
            continue
        seen.add(p.data_ptr())
        total += _logical_numel(p)
    return total


def linear_weight_bytes(model: nn.Module, ignore: Iterable[str] = DEFAULT_IGNORE) -> int:
    """Bytes held by the targeted Linear weights, quantization constants included."""
    total = 0
    for mod in linear_layers(model, None, ignore).values():
        w = mod.weight
        total += w.numel() * w.element_size()
        state = getattr(w, "quant_state", None)
        if state is not None:
            total += state.absmax.numel() * state.absmax.element_size()
            nested = getattr(state, "state2", None)
            if nested is not None:
                total += nested.absmax.numel() * nested.absmax.element_size()
        scb = getattr(w, "SCB", None)
        if scb is not None:
            total += scb.numel() * scb.element_size()
    return total


def zero_fraction(model: nn.Module, ignore: Iterable[str] = DEFAULT_IGNORE) -> float:
    """Fraction of exactly-zero weights over the targeted Linear layers."""
    zeros = total = 0
    for mod in linear_layers(model, None, ignore).values():
        w = mod.weight
        if w.device.type == "meta" or not w.is_floating_point():
            continue
        zeros += int((w == 0).sum())
        total += w.numel()
    return zeros / total if total else 0.0


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device
