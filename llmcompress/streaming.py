"""Compress a model larger than RAM, one decoder layer in memory at a time (``output.low_memory``).

GPTQ's layer-sequential calibration only ever needs one decoder layer's weights (Frantar et al.,
2022, Sec. 4), so the whole model never has to be in memory: the model is built on the meta
device (no storage), its embeddings, final norm and head are read from the checkpoint, and the
calibration engine asks this module for each decoder layer just before it processes it. The
layer's tensors are read from the safetensors shards (each file opened, read and unmapped
again), compressed, handed to :class:`~llmcompress.export.ShardWriter` and dropped back to
the meta device. Peak memory: the non-layer weights, one layer, the calibration hidden states
and the compressed shard being gathered (at most ``output.max_shard_size``; lower it to bound
memory further), whatever the depth of the model.

The arithmetic is the in-memory path's, so the written tensors are the same bytes. What needs
the whole model is not available: the before/after evaluation and the fresh-process reload check
(measure the output afterwards with ``llmcompress eval``). Checked before any weights load:
an output directory, one stage whose method supports it (GPTQ), a safetensors checkpoint.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from .errors import ConfigError, DataError, ModelLoadError

logger = logging.getLogger(__name__)


def check(recipe, output_dir, model) -> None:
    """Refuse what low_memory cannot do, before anything loads."""
    if output_dir is None:
        raise ConfigError("low_memory writes each layer as soon as it is compressed: give an output directory "
                          "(--output)", "low_memory")
    if isinstance(model, nn.Module):
        raise ConfigError("low_memory loads the model layer by layer from its checkpoint: pass a model spec "
                          "(alias, directory, hub id), not a loaded model", "low_memory")
    if str(model).endswith(".gguf"):
        raise _gguf_error(model)
    stages = recipe.stages
    if len(stages) != 1 or not getattr(stages[0], "STREAMABLE", False):
        names = ", ".join(s.METHOD for s in stages)
        raise ConfigError(f"low_memory runs one layer-by-layer stage (gptq); this recipe has: {names}. "
                          "Split the recipe, or drop low_memory for models that fit in memory", "low_memory")
    if recipe.output.format not in ("compressed-tensors", "gptq"):
        raise ConfigError(f"low_memory writes compressed-tensors or gptq; got {recipe.output.format}", "format")


def _gguf_error(spec) -> ConfigError:
    return ConfigError(f"low_memory reads safetensors checkpoints, and '{spec}' is a GGUF file: convert it once "
                       "(e.g. `llmcompress run bf16 --model FILE.gguf --output DIR`) and pass DIR", "low_memory")


class CheckpointReader:
    """Tensors of a safetensors checkpoint by name, read on demand."""

    def __init__(self, folder: Path):
        import json

        self.folder = Path(folder)
        index = self.folder / "model.safetensors.index.json"
        single = self.folder / "model.safetensors"
        if index.exists():
            self.weight_map = json.loads(index.read_text())["weight_map"]
        elif single.exists():
            from safetensors import safe_open

            with safe_open(str(single), framework="pt") as f:
                self.weight_map = {k: single.name for k in f.keys()}
        else:
            raise ModelLoadError(f"{self.folder} holds no safetensors checkpoint (model.safetensors or "
                                 "model.safetensors.index.json); low_memory reads only safetensors")

    def __contains__(self, key: str) -> bool:
        return key in self.weight_map

    def read(self, keys: list[str], dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
        """The tensors ``keys`` (floating ones cast to ``dtype``), each shard opened once."""
        from safetensors import safe_open

        by_file: dict[str, list[str]] = {}
        for k in keys:
            by_file.setdefault(self.weight_map[k], []).append(k)
        out = {}
        for file, names in by_file.items():
            with safe_open(str(self.folder / file), framework="pt") as f:
                for k in names:
                    t = f.get_tensor(k)
                    out[k] = t.to(dtype) if dtype is not None and t.is_floating_point() else t.clone()
        return out

    def first_float_dtype(self) -> torch.dtype:
        return next(t.dtype for t in self.read([next(iter(self.weight_map))], None).values())


def local_checkpoint(source) -> Path:
    """The folder holding ``source``'s config and safetensors files (downloaded for hub ids)."""
    from . import models

    if source.kind == "gguf":
        raise _gguf_error(source.spec)
    if source.kind == "alias":
        models._ensure_alias_converted(source)
        return Path(source.path)
    if source.kind == "dir":
        return Path(source.path)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(source.hub_id, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model",
                                                                  "*.tiktoken", "*.jinja"]))


def _return_freed_memory() -> None:
    """Give freed heap memory back to the OS (glibc ``malloc_trim``).

    A layer's tensors and GPTQ's temporaries are a few MB each, under glibc's (self-raising) mmap
    threshold, so they live in the heap, and the small compressed tensors kept for the output pin
    pages between them. Trimming after the layer is freed, and copying the kept tensors only then,
    holds RSS flat; measured on SmolLM2-135M: +15 to +33 MB of RSS per layer otherwise, which
    would defeat the purpose.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError, TypeError):  # not glibc: its allocator behaves differently anyway
        pass


def _set(module: nn.Module, name: str, value: torch.Tensor) -> None:
    from accelerate.utils import set_module_tensor_to_device

    set_module_tensor_to_device(module, name, "cpu", value=value)


def load_skeleton(source, dtype: torch.dtype | None):
    """``(model, tokenizer, stream)``: the model on the meta device except its non-layer weights."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from .modeling import check_supported, decoder_layer_prefix

    folder = local_checkpoint(source)
    config = AutoConfig.from_pretrained(folder)
    check_supported(config, source.spec)
    reader = CheckpointReader(folder)
    if dtype is None:  # what from_pretrained(dtype="auto") picks
        dtype = getattr(config, "dtype", None) or reader.first_float_dtype()
        dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    with init_empty_weights(include_buffers=False):  # rotary tables are computed, not stored: keep them real
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.eval()
    prefix = decoder_layer_prefix(model) + "."
    keys = list(model.state_dict())
    tied = bool(getattr(config.get_text_config(), "tie_word_embeddings", False))
    missing = [k for k in keys if k not in reader and not (tied and k == "lm_head.weight")]
    if missing:
        raise ModelLoadError(f"low_memory: the checkpoint in {folder} lacks tensors the model expects "
                             f"({', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''}); its tensor names must "
                             "match the transformers model's. Load it without low_memory instead")
    outer = [k for k in keys if not k.startswith(prefix) and k in reader]
    for key, value in reader.read(outer, dtype).items():
        _set(model, key, value)
    if tied:
        model.tie_weights()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer, LayerStream(reader, dtype)


class LayerStream:
    """The calibration engine's source and sink of decoder layers (see module docstring)."""

    def __init__(self, reader: CheckpointReader, dtype: torch.dtype):
        self.reader, self.dtype = reader, dtype
        self.writer = None
        self.options: dict = {}

    def enter(self, prefix: str, layer: nn.Module) -> None:
        """Read the layer's tensors into it (on CPU)."""
        names = list(layer.state_dict())
        tensors = self.reader.read([f"{prefix}.{n}" for n in names], self.dtype)
        for n in names:
            t = tensors[f"{prefix}.{n}"]
            if t.is_floating_point() and not torch.isfinite(t).all():
                raise DataError(f"'{prefix}.{n}' holds NaN or infinite values in the checkpoint; check it")
            _set(layer, n, t)

    def leave(self, prefix: str, layer: nn.Module) -> None:
        """Write the compressed layer, then free it (its quantization records keep only their grids)."""
        from . import export
        from .methods.quant.record import get_record, quantized_modules

        plain = {n: t.detach() for n, t in layer.state_dict().items()}
        tensors = export.merge_tensors(plain, export.serialize(layer, self.options))
        for mod in quantized_modules(layer).values():
            rec = get_record(mod)
            rec.scale = rec.scale.to("meta")
            rec.zero = rec.zero.to("meta") if rec.zero is not None else None
        layer.to("meta")
        del plain
        _return_freed_memory()
        self.writer.add({f"{prefix}.{n}": t.clone() for n, t in tensors.items()})
        del tensors
        _return_freed_memory()
