"""What a quantization method leaves on each module it quantized.

The weight of a quantized ``nn.Linear`` holds the dequantized values ``(q - z) * s`` in
the model's dtype (so the in-memory model runs as is and gives the logits the saved
model will give); the record keeps the grid, scales and zero points that the writers
need to store the integers. A record is checked against the weight when written: a
weight changed after quantization (for example by fine-tuning) is refused, not saved
wrongly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .grid import QuantArgs, dequantize, expand_groups, integers

ATTR = "_llmcompress_quant"


@dataclass
class QuantRecord:
    """Grid and parameters of one quantized weight. ``scale``/``zero``: ``[rows, n_groups]``."""

    args: QuantArgs
    scale: torch.Tensor
    zero: torch.Tensor | None
    method: str

    def codes(self, weight: torch.Tensor) -> torch.Tensor:
        """int8 codes of ``weight``, verified to dequantize back to it exactly."""
        # The grid stays where it was computed (the GPU) while the layer may have gone back to
        # the CPU (offloaded or streamed layers): compute on the weight's device.
        scale = self.scale.to(weight.device)
        zero = self.zero.to(weight.device) if self.zero is not None else None
        q = integers(weight, scale, zero, self.args)
        g = self.args.group_of(weight.shape[1])
        back = dequantize(q, expand_groups(scale, g), expand_groups(zero, g) if zero is not None else None,
                          weight.dtype)
        if not torch.equal(back, weight):
            bad = (back != weight).sum().item()
            raise RuntimeError(
                f"{bad} weights no longer lie on the quantization grid recorded by '{self.method}': "
                "the weight changed after quantization. Quantize as the last stage of a recipe."
            )
        return q


def set_record(module: nn.Module, record: QuantRecord) -> None:
    setattr(module, ATTR, record)


def get_record(module: nn.Module) -> QuantRecord | None:
    return getattr(module, ATTR, None)


def quantized_modules(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if get_record(m) is not None}
