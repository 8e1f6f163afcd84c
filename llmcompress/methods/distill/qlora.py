"""QLoRA students: LoRA adapters trained on a frozen 4-bit (nf4) copy of the student.

Dettmers et al., "QLoRA: Efficient Finetuning of Quantized LLMs" (NeurIPS 2023). The base is
quantized by transformers' own bitsandbytes integration (the student is saved once and
reloaded with a ``BitsAndBytesConfig``), prepared by peft, and only the adapters train.

What the adapters learned is relative to the *quantized* base, so the output holds
``dequant(nf4(W)) + B A`` for every adapted Linear, in the student's dtype, and the student's
own other weights (embeddings, norms, head; the 4-bit copy keeps them frozen). Merging
through peft would re-quantize the merged weight to nf4 and lose part of ``B A``. The
dequantized bases are written into the student right after loading (no extra copy; and
bitsandbytes repacks 4-bit weights for its CPU kernels on the first forward), the adapters'
products are added after training.
"""

from __future__ import annotations

import importlib.util
import tempfile

import torch

from ...errors import MissingDependencyError

ATTR = "_llmcompress_qlora_layers"


def qlora_student(model, r: int, alpha: int, targets: list[str], gradient_checkpointing: bool):
    """A peft model: nf4 copy of ``model`` with LoRA adapters of rank ``r`` on ``targets``."""
    if importlib.util.find_spec("bitsandbytes") is None:
        raise MissingDependencyError("qlora needs bitsandbytes: pip install 'llmcompress[bnb]'")
    import bitsandbytes.functional as bnbf
    from bitsandbytes.nn import Linear4bit
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from ..bnb import prepare_qlora

    device = next(model.parameters()).device
    with tempfile.TemporaryDirectory(prefix="llmcompress-qlora-") as tmp:
        model.save_pretrained(tmp)
        qc = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                bnb_4bit_compute_dtype=torch.bfloat16)
        kwargs = {"device_map": str(device)} if device.type != "cpu" else {}
        base = AutoModelForCausalLM.from_pretrained(tmp, quantization_config=qc, dtype=torch.bfloat16, **kwargs)
    layers = []
    with torch.no_grad():
        for name, module in base.named_modules():
            if isinstance(module, Linear4bit) and name.split(".")[-1] in targets:
                w = module.weight
                target = model.get_submodule(name).weight
                target.copy_(bnbf.dequantize_4bit(w.data, w.quant_state).to(target.device, target.dtype))
                layers.append(name)
    student = prepare_qlora(base, r=r, alpha=alpha, target_modules=targets, gradient_checkpointing=gradient_checkpointing)
    setattr(student, ATTR, layers)
    return student


@torch.no_grad()
def merge_into(model, student):
    """Write ``dequant(nf4(W)) + B A`` of every adapted Linear of ``student`` into ``model``; returns ``model``."""
    from peft.tuners.lora import LoraLayer

    layers = set(getattr(student, ATTR))
    merged = set()
    for name, module in student.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        key = name.split("base_model.model.", 1)[-1]
        w = model.get_submodule(key).weight
        delta = sum(module.get_delta_weight(a).float() for a in module.active_adapters)
        w.copy_((w.float() + delta.to(w.device)).to(w.dtype))
        merged.add(key)
    if merged != layers:
        raise RuntimeError(f"QLoRA merge: adapted layers {sorted(merged ^ layers)[:3]} do not match the quantized ones")
    return model
