"""Writer for the GPTQ v1 checkpoint format (``quant_method: gptq``).

This is what auto-gptq wrote and what transformers loads through optimum + GPTQModel,
whose kernels keep int4 packed on the GPU. Per quantized Linear ``X``:

* ``X.qweight`` int32 ``[in * bits / 32, out]``: unsigned codes ``q + 2^(bits-1)`` packed
  along the input dimension, element ``k`` of a word at bit ``(k % (32/bits)) * bits``;
* ``X.qzeros`` int32 ``[groups, out * bits / 32]``: unsigned zero points *minus one* (the
  v1 convention; loaders add the one back), packed along the output dimension;
* ``X.scales`` float16 ``[groups, out]``;
* ``X.g_idx`` int32 ``[in]``: ``i // group_size``. Act-order with static groups keeps this
  trivial, so kernels need no indirection (``desc_act: false``).

Only 2, 4 and 8 bits pack evenly into int32 words.
"""

from __future__ import annotations

import torch
from torch import nn

from ...errors import ConfigError
from ...export import Serialized, register_serializer
from .record import get_record, quantized_modules

FORMAT = "gptq"
SCALE_DTYPE = torch.float16
PACKABLE_BITS = (2, 4, 8)


def pack_rows(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack unsigned ``values`` ``[n, m]`` (``n`` divisible by 32/bits) along dim 0 into int32 ``[n*bits/32, m]``."""
    per = 32 // bits
    n, m = values.shape
    v = values.to(torch.int64).reshape(n // per, per, m)
    shifts = (torch.arange(per, dtype=torch.int64) * bits).view(1, per, 1)
    packed = (v << shifts).sum(dim=1)
    # Reinterpret the low 32 bits as signed int32 (the top nibble may set the sign bit).
    return (packed - ((packed >> 31) & 1) * (1 << 32)).to(torch.int32)


def unpack_rows(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of :func:`pack_rows`: int32 ``[n*bits/32, m]`` -> unsigned int64 ``[n, m]``."""
    per = 32 // bits
    p = packed.to(torch.int64) & 0xFFFFFFFF
    shifts = (torch.arange(per, dtype=torch.int64) * bits).view(1, per, 1)
    vals = (p.unsqueeze(1) >> shifts) & ((1 << bits) - 1)
    return vals.reshape(-1, packed.shape[1])


def check_packable(bits: int) -> None:
    if bits not in PACKABLE_BITS:
        raise ConfigError(f"the gptq format packs only {PACKABLE_BITS} bits; got bits={bits}. Use compressed-tensors.", "bits")


@register_serializer(FORMAT)
def serialize(model: nn.Module, options: dict) -> Serialized | None:
    if options.get("format") != FORMAT:
        return None
    records = quantized_modules(model)
    if not records:
        return None
    all_args = {get_record(m).args for m in records.values()}
    if len(all_args) > 1:
        raise ConfigError("the gptq format holds one grid for the whole model; per-layer overrides need compressed-tensors",
                          "overrides")
    args = all_args.pop()
    check_packable(args.bits)
    offset = 1 << (args.bits - 1)
    tensors: dict[str, torch.Tensor | None] = {}
    for name, mod in ({} if options.get("config_only") else records).items():
        rec = get_record(mod)
        w = mod.weight.data
        rows, cols = w.shape
        g = args.group_of(cols)
        q = rec.codes(w).to(torch.int64) + offset  # unsigned codes [out, in]
        zero = (rec.zero.to(torch.int64) + offset) if rec.zero is not None else torch.full(
            (rows, cols // g), offset, dtype=torch.int64)
        if bool((zero == 0).any()):
            # v1 stores zero - 1; a zero point of 0 would wrap to 2^bits - 1 in the loaders.
            # (the grid keeps zero points >= 1 unsigned; this guards weights quantized elsewhere)
            raise ConfigError(f"layer '{name}' has a zero point of 0, which the GPTQ v1 format cannot "
                              "store; use sym: true or the compressed-tensors format", "sym")
        if not torch.equal(rec.scale.to(SCALE_DTYPE).to(rec.scale.dtype), rec.scale):
            # Rounding them here would store weights the in-memory model does not have.
            raise ConfigError(f"layer '{name}' was quantized with {rec.scale.dtype} scales, which the GPTQ v1 "
                              "format stores in float16; quantize with the output format set (compress() or "
                              "`llmcompress run` with output: {format: gptq}), or with Context(scale_dtype="
                              "torch.float16) when applying a method by hand", "output.format")
        tensors[f"{name}.weight"] = None
        tensors[f"{name}.qweight"] = pack_rows(q.t().contiguous().cpu(), args.bits)
        # zero is [out, groups]: pack along out, store as [groups, out * bits / 32]
        tensors[f"{name}.qzeros"] = pack_rows((zero - 1).contiguous().cpu(), args.bits).t().contiguous()
        tensors[f"{name}.scales"] = rec.scale.t().contiguous().to(SCALE_DTYPE).cpu()
        tensors[f"{name}.g_idx"] = (torch.arange(cols) // g).to(torch.int32)
    modules = sorted({n.split(".")[-2] + "." + n.split(".")[-1] for n in records})
    config = {
        "quant_method": "gptq", "bits": args.bits, "group_size": args.group_size, "sym": args.sym,
        "desc_act": False, "static_groups": True, "true_sequential": True, "checkpoint_format": "gptq",
        "damp_percent": options.get("damp", 0.01), "modules_in_block_to_quantize": [modules],
    }
    return Serialized(tensors, {"quantization_config": config})


def rebuild_weight(tensors: dict, name: str, bits: int) -> torch.Tensor:
    """The float weight a v1 loader rebuilds from ``name``'s qweight / qzeros / scales / g_idx."""
    q = unpack_rows(tensors[f"{name}.qweight"], bits).t()  # [out, in]
    z = unpack_rows(tensors[f"{name}.qzeros"].t().contiguous(), bits).t() + 1  # [groups, out]; v1 stores zero - 1
    s = tensors[f"{name}.scales"].float()  # [groups, out]
    g_idx = tensors[f"{name}.g_idx"].long()
    return (q - z[g_idx].t()).float() * s[g_idx].t()


def verify_dir(model: nn.Module, folder) -> float:
    """Check a written v1 checkpoint without its loaders: every quantized weight rebuilt from
    the files must equal the in-memory weight. Returns the max abs difference (0 when exact)."""
    from pathlib import Path

    from safetensors.torch import load_file

    from ...verify import VerificationError

    tensors: dict = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        tensors.update(load_file(f))
    worst = 0.0
    for name, mod in quantized_modules(model).items():
        bits = get_record(mod).args.bits
        diff = (rebuild_weight(tensors, name, bits) - mod.weight.detach().float().cpu()).abs().max().item()
        worst = max(worst, diff)
    if worst != 0.0:
        raise VerificationError(f"the GPTQ v1 tensors in '{folder}' do not rebuild the quantized weights "
                                f"(max abs difference {worst:.3g}); the output was not kept")
    return worst
