"""Writer for compressed-tensors ``pack-quantized`` checkpoints.

This is the format llm-compressor writes and vLLM serves natively; plain
``AutoModelForCausalLM.from_pretrained`` loads it when the ``compressed-tensors``
package is installed (transformers decompresses it to dense weights on load, so the
int4 saving is on disk and in vLLM, not in transformers' memory).

Per quantized Linear ``X``: ``X.weight_packed`` (int32, the codes packed along the input
dimension by compressed-tensors' own ``pack_to_int32``), ``X.weight_scale``
(``[out, in / group]``, the model dtype), ``X.weight_shape`` and, for asymmetric grids,
``X.weight_zero_point`` (packed along the output dimension).
"""

from __future__ import annotations

from collections import Counter

import torch
from torch import nn

from ...errors import require
from ...export import Serialized, register_serializer
from .grid import QuantArgs
from .record import get_record, quantized_modules

FORMAT = "compressed-tensors"


def _weights_args(args: QuantArgs) -> dict:
    strategy = "channel" if args.group_size == -1 else "group"
    out = {
        "num_bits": args.bits,
        "type": "int",
        "symmetric": args.sym,
        "strategy": strategy,
        "dynamic": False,
        "observer": "minmax",
    }
    if strategy == "group":
        out["group_size"] = args.group_size
    return out


def quantization_config(model: nn.Module, records: dict[str, nn.Module]) -> dict:
    """The ``quantization_config`` entry of config.json for the quantized modules."""
    by_args: dict[QuantArgs, list[str]] = {}
    for name, mod in records.items():
        by_args.setdefault(get_record(mod).args, []).append(name)
    counts = Counter({a: len(v) for a, v in by_args.items()})
    default_args = counts.most_common(1)[0][0]
    groups = {}
    # Overrides first, matched by exact names (a regex target outranks the class target).
    for i, (args, names) in enumerate(sorted(by_args.items(), key=lambda kv: len(kv[1]))):
        if args == default_args:
            continue
        pattern = "re:^(" + "|".join(n.replace(".", r"\.") for n in names) + ")$"
        groups[f"group_{len(groups)}"] = {"targets": [pattern], "weights": _weights_args(args),
                                          "input_activations": None, "output_activations": None}
    groups[f"group_{len(groups)}"] = {"targets": ["Linear"], "weights": _weights_args(default_args),
                                      "input_activations": None, "output_activations": None}
    ignore = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n not in records]
    return {
        "quant_method": "compressed-tensors",
        "format": "pack-quantized",
        "quantization_status": "compressed",
        "config_groups": groups,
        "ignore": ignore,
        "kv_cache_scheme": None,
    }


@register_serializer(FORMAT)
def serialize(model: nn.Module, options: dict) -> Serialized | None:
    """Pack every quantized Linear of ``model``; None when nothing is quantized.

    ``options["config_only"]``: only the config entry (its weights may be on the meta device)."""
    if options.get("format", FORMAT) != FORMAT:
        return None
    records = quantized_modules(model)
    if not records:
        return None
    if options.get("config_only"):  # low_memory: the weights were written layer by layer
        return Serialized({}, {"quantization_config": quantization_config(model, records)})
    helpers = require("compressed_tensors.compressors.pack_quantized.helpers",
                      purpose="writing compressed-tensors checkpoints")
    tensors: dict[str, torch.Tensor | None] = {}
    for name, mod in records.items():
        rec = get_record(mod)
        weight = mod.weight.data
        q = rec.codes(weight)
        tensors[f"{name}.weight"] = None  # replaced by the packed form
        tensors[f"{name}.weight_packed"] = helpers.pack_to_int32(q.cpu(), rec.args.bits)
        tensors[f"{name}.weight_scale"] = rec.scale.to(weight.dtype).cpu()
        tensors[f"{name}.weight_shape"] = torch.tensor(list(weight.shape), dtype=torch.int64)
        if rec.zero is not None:
            tensors[f"{name}.weight_zero_point"] = helpers.pack_to_int32(
                rec.zero.to(torch.int8).cpu(), rec.args.bits, packed_dim=0)
    return Serialized(tensors, {"quantization_config": quantization_config(model, records)})
