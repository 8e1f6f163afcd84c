"""Dtype conversion: fp32 / bf16 / fp16 weights.

Recipe::

    - method: dtype
      dtype: bfloat16
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ...config import check_choice
from ...models import DTYPES
from ...registry import MethodConfig, register_method


@dataclass
class DtypeConfig(MethodConfig):
    """Cast every floating-point weight to one dtype."""

    dtype: str = field(default="bfloat16", metadata={"help": "float32 | bfloat16 | float16 (fp32/bf16/fp16)"})

    def __post_init__(self):
        check_choice("dtype", self.dtype, tuple(DTYPES))


@register_method("dtype", DtypeConfig)
def apply_dtype(model, cfg: DtypeConfig, ctx=None):
    """Cast the model in place; returns it."""
    model.to(DTYPES[cfg.dtype])
    return model
