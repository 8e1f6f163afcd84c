"""The only code that writes a model directory.

Everything is written into a temporary sibling directory that is renamed into place at
the end, so a failure or Ctrl-C never leaves a half-written output, and an existing
directory is replaced only when ``overwrite`` is set (and only after the new one is
complete). Weights are safetensors; methods that change the on-disk format
(quantization packing, sparse formats) plug in a *serializer* instead of writing files.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .errors import OutputExistsError

logger = logging.getLogger(__name__)

RECIPE_FILE = "llmcompress_recipe.yaml"
REPORT_FILE = "llmcompress_report.json"


def check_output_dir(path: str | os.PathLike, overwrite: bool) -> Path:
    """Fail early when the output exists and may not be replaced."""
    path = Path(path).expanduser().absolute()
    if path.exists() and not overwrite:
        raise OutputExistsError(
            f"output directory '{path}' already exists. Choose another --output, or pass "
            f"--overwrite to replace it (the old one is removed only after the new one is complete)."
        )
    if path.exists() and not path.is_dir():
        raise OutputExistsError(f"output path '{path}' exists and is not a directory.")
    return path


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, overwrite: bool = False):
    """Yield a temporary directory that becomes ``path`` only if the block succeeds."""
    path = check_output_dir(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.partial-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:  # includes KeyboardInterrupt: never leave a partial output
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if path.exists():
        old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@dataclass
class Serialized:
    """What a serializer makes of a model: tensors to write and config entries to add."""

    tensors: dict[str, torch.Tensor]
    config_updates: dict[str, Any] = field(default_factory=dict)
    # A directory already holding the complete weights and config (written by the
    # method itself, e.g. bitsandbytes before any forward): copied as is.
    copy_from: Path | None = None


# A serializer returns None when the model holds nothing it handles.
Serializer = Callable[[nn.Module, dict], "Serialized | None"]
_SERIALIZERS: dict[str, Serializer] = {}


def register_serializer(name: str):
    """Decorator: register a function ``(model, options) -> Serialized | None``."""

    def deco(fn: Serializer) -> Serializer:
        _SERIALIZERS[name] = fn
        return fn

    return deco


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with tied duplicates removed (what ``save_pretrained`` writes)."""
    out, seen = {}, {}
    for key, tensor in model.state_dict().items():
        ptr = (tensor.data_ptr(), tensor.shape, tensor.dtype) if tensor.numel() else None
        if ptr is not None and ptr in seen:
            continue
        if ptr is not None:
            seen[ptr] = key
        out[key] = tensor
    return out


def parse_size(text: str | int, key: str = "max_shard_size") -> int:
    """Bytes in ``5GB`` / ``500MB`` / ``100KB`` / an integer (decimal units, as ``save_pretrained``)."""
    import re

    from .errors import ConfigError

    if isinstance(text, int) and text > 0:
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB)?\s*", str(text), re.IGNORECASE)
    if not m or float(m.group(1)) <= 0:
        raise ConfigError(f"'{key}' must be a size such as 5GB or 500MB; got {text!r}", key)
    unit = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}[(m.group(2) or "b").lower()]
    return int(float(m.group(1)) * unit)


class ShardWriter:
    """Writes tensors as they come, one safetensors shard whenever ``max_shard_bytes`` have gathered.

    The writer of every serialized checkpoint: :func:`save` adds a whole state dict at once; for
    models that are never whole in memory (``low_memory``) a decoder layer's tensors are added as
    soon as it is compressed and then dropped. Shards get their final ``model-0000i-of-0000n``
    names, and the index its weight map, in :meth:`close` (one shard: ``model.safetensors``).
    """

    def __init__(self, folder: Path, max_shard_bytes: int = 5 * 10**9):
        self.folder, self.max_bytes = Path(folder), max_shard_bytes
        self.pending: dict[str, torch.Tensor] = {}
        self.pending_bytes = 0
        self.files: list[tuple[str, list[str]]] = []
        self.total = 0

    def add(self, tensors: dict[str, torch.Tensor]) -> None:
        for key, t in tensors.items():
            size = t.numel() * t.element_size()
            if self.pending and self.pending_bytes + size > self.max_bytes:
                self._flush()  # a shard stays under the limit unless one tensor exceeds it
            self.pending[key] = t.detach().contiguous().cpu()
            self.pending_bytes += size

    def _flush(self) -> None:
        from safetensors.torch import save_file

        if not self.pending:
            return
        name = f".part-{len(self.files):05d}.safetensors"
        save_file(self.pending, self.folder / name, metadata={"format": "pt"})
        self.files.append((name, list(self.pending)))
        self.total += self.pending_bytes
        self.pending, self.pending_bytes = {}, 0

    def close(self) -> None:
        self._flush()
        n = len(self.files)
        weight_map = {}
        for i, (part, keys) in enumerate(self.files, 1):
            final = "model.safetensors" if n == 1 else f"model-{i:05d}-of-{n:05d}.safetensors"
            os.replace(self.folder / part, self.folder / final)
            os.chmod(self.folder / final, 0o644)
            weight_map.update({k: final for k in keys})
        if n > 1:
            index = {"metadata": {"total_size": self.total}, "weight_map": dict(sorted(weight_map.items()))}
            (self.folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def serialize(module: nn.Module, options: dict) -> list[Serialized]:
    """What every registered serializer makes of ``module`` (names relative to it)."""
    return [s for s in (fn(module, options) for fn in _SERIALIZERS.values()) if s is not None]


def merge_tensors(plain: dict[str, torch.Tensor], serialized: list[Serialized]) -> dict[str, torch.Tensor]:
    """``plain`` with the serializers' replacements applied (a None value removes a tensor)."""
    tensors = dict(plain)
    for s in serialized:
        for key in [k for k, v in s.tensors.items() if v is None]:
            tensors.pop(key, None)
        tensors.update({k: v for k, v in s.tensors.items() if v is not None})
    return tensors


def write_config(model: nn.Module, folder: Path, serialized: list[Serialized]) -> None:
    """config.json with the serializers' entries (added for the write only) and generation_config.json."""
    config = model.config
    for s in serialized:
        for key, value in s.config_updates.items():
            setattr(config, key, value)
    try:
        config.save_pretrained(folder)
    finally:
        for s in serialized:
            for key in s.config_updates:
                if hasattr(config, key):
                    delattr(config, key)
    gen = getattr(model, "generation_config", None)
    if gen is not None:
        gen.save_pretrained(folder)


def write_extras(folder: Path, tokenizer, recipe_yaml: str | None, report: dict | None, model_card: str | None) -> None:
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    if recipe_yaml is not None:
        (folder / RECIPE_FILE).write_text(recipe_yaml)
    if report is not None:
        (folder / REPORT_FILE).write_text(json.dumps(report, indent=2, default=str))
    if model_card is not None:
        (folder / "README.md").write_text(model_card)


def save(
    model: nn.Module,
    tokenizer,
    output_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
    recipe_yaml: str | None = None,
    model_card: str | None = None,
    report: dict | None = None,
    options: dict | None = None,
    finalize: Callable[[Path], None] | None = None,
) -> Path:
    """Write a model directory atomically.

    Args:
        model: the (compressed) model.
        tokenizer: saved beside it.
        output_dir: target directory.
        overwrite: replace an existing directory.
        recipe_yaml: the recipe used, saved as ``llmcompress_recipe.yaml``.
        model_card: ``README.md`` text.
        report: evaluation report, saved as ``llmcompress_report.json``.
        options: serializer options (e.g. ``{"format": "compressed-tensors"}``).
        finalize: called with the temporary directory once everything is written and
            before it is renamed into place (reports, reload checks); if it raises,
            nothing is kept.

    Returns:
        The output path.
    """
    options = options or {}
    serialized = serialize(model, options)
    with atomic_directory(output_dir, overwrite) as tmp:
        copy = next((s.copy_from for s in serialized if s.copy_from is not None), None)
        if copy is not None:
            for f in Path(copy).iterdir():
                if f.is_file():
                    shutil.copy2(f, tmp / f.name)
        elif not serialized:
            model.save_pretrained(tmp, max_shard_size=parse_size(options.get("max_shard_size", "5GB")))
        else:
            writer = ShardWriter(tmp, parse_size(options.get("max_shard_size", "5GB")))
            writer.add(merge_tensors(plain_state_dict(model), serialized))
            writer.close()
            write_config(model, tmp, serialized)
        write_extras(tmp, tokenizer, recipe_yaml, report, model_card)
        if finalize is not None:
            finalize(tmp)
    logger.info("wrote %s", output_dir)
    return Path(output_dir)


def directory_size(path: str | os.PathLike, suffixes=(".safetensors", ".bin")) -> int:
    """Bytes of weight files in a model directory."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file() and f.suffix in suffixes)
