"""bitsandbytes 8-bit (LLM.int8) and 4-bit (NF4 / FP4) weights, applied when the model loads.

Dettmers et al., "LLM.int8(): 8-bit Matrix Multiplication for Transformers at Scale" (2022);
Dettmers et al., "QLoRA: Efficient Finetuning of Quantized LLMs" (2023).

Recipe::

    - method: bnb
      load_in_4bit: true
      quant_type: nf4           # or fp4
      double_quant: true
      compute_dtype: bfloat16

The output directory is written by transformers' own bitsandbytes serialization and reloads
with plain ``from_pretrained`` (no quantization_config needed). On CPUs with AVX512
bitsandbytes repacks 4-bit weights in place on the first forward, after which ``save_pretrained`` writes a corrupt
file; so the model is saved once right after loading, before any forward, and that pristine
copy is what the output holds (then verified by a fresh-process reload).
"""

from __future__ import annotations

import importlib.util
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch

from ...config import check_choice
from ...errors import ConfigError, MissingDependencyError
from ...export import Serialized, register_serializer
from ...models import DTYPES
from ...registry import MethodConfig, register_method

ATTR = "_llmcompress_bnb_pristine"
QUANT_TYPES = ("nf4", "fp4")
STORAGE = ("uint8", "bfloat16", "float16", "float32")


@dataclass
class BnbConfig(MethodConfig):
    """bitsandbytes quantization at load time (see module docstring)."""

    KIND: ClassVar[str] = "quantized"
    AT_LOAD: ClassVar[bool] = True

    load_in_8bit: bool = field(default=False, metadata={"help": "LLM.int8 weights"})
    load_in_4bit: bool = field(default=False, metadata={"help": "4-bit weights (nf4 / fp4)"})
    quant_type: str = field(default="nf4", metadata={"help": "4-bit data type: nf4 | fp4"})
    double_quant: bool = field(default=True, metadata={"help": "4-bit: quantize the quantization constants too"})
    compute_dtype: str = field(default="bfloat16", metadata={"help": "4-bit matmul dtype: bfloat16 | float16 | float32"})
    quant_storage: str = field(default="uint8", metadata={"help": "4-bit storage dtype: uint8 | bfloat16 | float16 | float32"})
    llm_int8_threshold: float = field(default=6.0, metadata={"help": "8-bit: outlier threshold kept in 16-bit"})
    skip_modules: list[str] = field(default_factory=lambda: ["lm_head"], metadata={"help": "modules kept in higher precision"})
    cpu_offload: bool = field(default=False, metadata={"help": "8-bit: keep offloaded modules in fp32 on CPU"})
    dtype: str = field(default="bfloat16", metadata={"help": "dtype of the modules that stay unquantized"})

    def __post_init__(self):
        if self.load_in_8bit == self.load_in_4bit:
            raise ConfigError("set exactly one of 'load_in_8bit' and 'load_in_4bit' to true", "load_in_4bit")
        check_choice("quant_type", self.quant_type, QUANT_TYPES)
        check_choice("compute_dtype", self.compute_dtype, ("bfloat16", "float16", "float32"))
        check_choice("quant_storage", self.quant_storage, STORAGE)
        check_choice("dtype", self.dtype, ("bfloat16", "float16", "float32"))

    def check_recipe(self, recipe) -> None:
        if importlib.util.find_spec("bitsandbytes") is None:
            raise MissingDependencyError("the bnb method needs bitsandbytes: pip install 'llmcompress[bnb]'")
        others = [s.METHOD for s in recipe.stages if s is not self and s.KIND == "quantized"]
        if others:
            raise ConfigError(
                f"bnb cannot be combined with {', '.join(others)} in one output: bitsandbytes quantizes the "
                "original weights at load time, and one checkpoint holds one quantization format", "method")
        if sum(isinstance(s, BnbConfig) for s in recipe.stages) > 1:
            raise ConfigError("a recipe takes one bnb stage", "method")

    def check_device(self, device: torch.device) -> None:
        if (self.load_in_4bit and self.compute_dtype == "bfloat16" and device.type == "cuda"
                and not torch.cuda.is_bf16_supported()):
            raise ConfigError(f"{torch.cuda.get_device_name(device)} cannot compute in bfloat16; "
                              "set compute_dtype: float16", "compute_dtype")

    def quantization_config(self):
        from transformers import BitsAndBytesConfig

        if self.load_in_8bit:
            return BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=self.llm_int8_threshold,
                                      llm_int8_skip_modules=self.skip_modules or None,
                                      llm_int8_enable_fp32_cpu_offload=self.cpu_offload)
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=self.quant_type,
                                  bnb_4bit_use_double_quant=self.double_quant,
                                  bnb_4bit_compute_dtype=DTYPES[self.compute_dtype],
                                  bnb_4bit_quant_storage=DTYPES.get(self.quant_storage, torch.uint8),
                                  llm_int8_skip_modules=self.skip_modules or None)

    def load_kwargs(self) -> dict:
        return {"quantization_config": self.quantization_config(), "dtype": DTYPES[self.dtype]}

    def after_load(self, model, ctx=None) -> None:
        """Save the freshly loaded model before anything runs it (see module docstring)."""
        keep = tempfile.TemporaryDirectory(prefix="llmcompress-bnb-")
        model.save_pretrained(keep.name)
        setattr(model, ATTR, keep)  # removed with the model


@register_method("bnb", BnbConfig)
def apply_bnb(model, cfg: BnbConfig, ctx=None):
    """Nothing to do after loading: the weights were quantized by ``from_pretrained``."""
    return model


def load_quantized(spec, cfg: BnbConfig, device: str | None = None):
    """Load ``spec`` quantized by ``cfg`` (model, tokenizer, source), ready to save or train."""
    from ... import models

    if importlib.util.find_spec("bitsandbytes") is None:
        raise MissingDependencyError("the bnb method needs bitsandbytes: pip install 'llmcompress[bnb]'")
    kwargs = cfg.load_kwargs()
    if device:
        kwargs["device_map"] = device
    model, tok, source = models.load(spec, **kwargs)
    cfg.after_load(model)
    return model, tok, source


def prepare_qlora(model, r: int = 16, alpha: int = 32, dropout: float = 0.05, target_modules=None,
                  gradient_checkpointing: bool = True):
    """LoRA adapters on a 4-bit (or 8-bit) base, through peft (QLoRA, Dettmers et al., 2023).

    Returns the peft model; only the adapters train.
    """
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    lora = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, task_type="CAUSAL_LM",
                      target_modules=target_modules or ["q_proj", "k_proj", "v_proj", "o_proj",
                                                        "gate_proj", "up_proj", "down_proj"])
    return get_peft_model(model, lora)


@register_serializer("bnb")
def serialize(model, options: dict) -> Serialized | None:
    keep = getattr(model, ATTR, None)
    if keep is None:
        return None
    return Serialized({}, copy_from=Path(keep.name))
