"""Recipes: an ordered list of method stages plus the data and output settings.

A recipe is YAML (or Python)::

    llmcompress: 1                 # recipe format version
    name: quickstart
    description: RTN int4 on SmolLM2-135M
    model: smollm2-135m            # default model, overridden by --model
    dtype: float32                 # dtype the model is loaded in (optional)
    calibration: {source: wiki_calib, num_samples: 128, seq_len: 512}
    evaluation: {source: wiki_eval, max_tokens: 4096, seq_len: 512}
    output: {format: compressed-tensors}
    stages:
      - method: rtn
        bits: 4
        group_size: 64

Every stage is a typed config of a registered method; ``Recipe.from_yaml`` validates
the whole file before anything is loaded, and errors name the file, the stage, the key
and the allowed values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .config import ConfigBase, check_choice
from .data import CalibrationConfig, EvaluationConfig
from .errors import ConfigError
from .models import DTYPES
from .registry import MethodConfig, get_method

FORMAT_VERSION = 1
RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"
TOP_KEYS = ("llmcompress", "name", "description", "model", "dtype", "calibration", "evaluation",
            "output", "stages", "push_to_hub")
OUTPUT_FORMATS = ("compressed-tensors", "gptq")


@dataclass
class OutputConfig(ConfigBase):
    """How the result is written."""

    format: str = field(default="compressed-tensors", metadata={"help": "quantized weights format: compressed-tensors | gptq"})
    verify: bool = field(default=True, metadata={"help": "reload the output in a fresh process and compare logits"})
    low_memory: bool = field(default=False, metadata={"help": "read, compress and write one decoder layer at a time, for models larger than RAM (gptq; no before/after evaluation or reload check)"})
    max_shard_size: str = field(default="5GB", metadata={"help": "largest safetensors file, e.g. 5GB, 500MB (as save_pretrained)"})

    @classmethod
    def _label(cls) -> str:
        return "output"

    def __post_init__(self):
        check_choice("format", self.format, OUTPUT_FORMATS)
        from .export import parse_size

        parse_size(self.max_shard_size, "max_shard_size")


@dataclass
class Recipe:
    """An ordered list of method stages and the settings around them."""

    stages: list[MethodConfig]
    name: str = "recipe"
    description: str = ""
    model: str | None = None
    dtype: str | None = None
    calibration: CalibrationConfig | None = None
    evaluation: EvaluationConfig | None = None
    output: OutputConfig = field(default_factory=OutputConfig)
    push_to_hub: str | None = None
    source: str = "<python>"  # where the recipe came from, for error messages

    def __post_init__(self):
        if self.dtype is not None and self.dtype not in DTYPES:
            raise ConfigError(f"recipe {self.source}: 'dtype' must be one of {', '.join(DTYPES)}; got {self.dtype!r}", "dtype")
        if self.calibration is None and any(s.NEEDS_CALIBRATION for s in self.stages):
            self.calibration = CalibrationConfig()
        for i, stage in enumerate(self.stages, 1):
            try:
                stage.check_recipe(self)
            except ConfigError as exc:
                raise ConfigError(f"recipe {self.source}, stage {i} ({stage.METHOD}): {exc}", exc.key) from None

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_dict(cls, data: Any, source: str = "<dict>") -> "Recipe":
        """Validate and build a recipe from plain data (parsed YAML)."""
        if not isinstance(data, dict):
            raise ConfigError(f"recipe {source}: the top level must be a mapping, got {type(data).__name__}")
        unknown = sorted(set(data) - set(TOP_KEYS))
        if unknown:
            raise ConfigError(f"recipe {source}: unknown top-level key '{unknown[0]}'; allowed: {', '.join(TOP_KEYS)}", unknown[0])
        version = data.get("llmcompress", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise ConfigError(f"recipe {source}: format version {version!r} is not supported (this llmcompress reads {FORMAT_VERSION})", "llmcompress")
        raw_stages = data.get("stages")
        if not isinstance(raw_stages, list) or not raw_stages:
            raise ConfigError(f"recipe {source}: 'stages' must be a non-empty list of method stages", "stages")
        stages = [_stage(raw, i, source) for i, raw in enumerate(raw_stages, 1)]

        def section(key, config_cls):
            if data.get(key) is None:
                return None
            if not isinstance(data[key], dict):
                raise ConfigError(f"recipe {source}: '{key}' must be a mapping", key)
            try:
                return config_cls.from_dict(data[key])
            except ConfigError as exc:
                raise ConfigError(f"recipe {source}, section '{key}': {exc}", exc.key) from None

        output = section("output", OutputConfig) or OutputConfig()
        for key in ("name", "description", "model", "dtype", "push_to_hub"):
            if data.get(key) is not None and not isinstance(data[key], str):
                raise ConfigError(f"recipe {source}: '{key}' must be a string, got {data[key]!r}", key)
        if data.get("push_to_hub"):
            from .hub import HubError, check_repo_id

            try:
                check_repo_id(data["push_to_hub"])
            except HubError as exc:
                raise ConfigError(f"recipe {source}, 'push_to_hub': {exc}", "push_to_hub") from None
        return cls(
            stages=stages,
            name=data.get("name") or Path(source).stem,
            description=data.get("description", ""),
            model=data.get("model"),
            dtype=data.get("dtype"),
            calibration=section("calibration", CalibrationConfig),
            evaluation=section("evaluation", EvaluationConfig),
            output=output,
            push_to_hub=data.get("push_to_hub"),
            source=source,
        )

    @classmethod
    def from_yaml(cls, path: str | Path) -> "Recipe":
        """Read and validate a YAML recipe file."""
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"recipe file '{path}' cannot be read: {exc.strerror or exc}") from None
        return cls.from_yaml_string(text, source=str(path))

    @classmethod
    def from_yaml_string(cls, text: str, source: str = "<string>") -> "Recipe":
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"recipe {source} is not valid YAML: {exc}") from None
        return cls.from_dict(data, source)

    @classmethod
    def load(cls, name_or_path: str | Path) -> "Recipe":
        """A recipe file path, or the name of a built-in recipe (``quickstart``)."""
        path = Path(name_or_path)
        if path.exists() or str(name_or_path).endswith((".yaml", ".yml")):
            if not path.exists():
                raise ConfigError(f"recipe file '{path}' does not exist")
            return cls.from_yaml(path)
        builtin = builtin_recipes()
        if str(name_or_path) in builtin:
            return cls.from_yaml(builtin[str(name_or_path)])
        raise ConfigError(
            f"no recipe file '{name_or_path}' and no built-in recipe of that name; built-in: {', '.join(builtin) or 'none'}")

    # ------------------------------------------------------------------ saving
    def to_dict(self) -> dict:
        out: dict[str, Any] = {"llmcompress": FORMAT_VERSION, "name": self.name}
        if self.description:
            out["description"] = self.description
        for key in ("model", "dtype"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        for key in ("calibration", "evaluation"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key).to_dict()
        out["output"] = self.output.to_dict()
        if self.push_to_hub:
            out["push_to_hub"] = self.push_to_hub
        out["stages"] = [{**s.to_dict(), "version": s.VERSION} for s in self.stages]
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @property
    def kinds(self) -> list[str]:
        return sorted({s.KIND for s in self.stages})


def _stage(raw: Any, index: int, source: str) -> MethodConfig:
    where = f"recipe {source}, stage {index}"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: a stage must be a mapping with a 'method' key, got {raw!r}")
    if "method" not in raw:
        raise ConfigError(f"{where}: missing key 'method'", "method")
    raw = dict(raw)
    name = raw.pop("method")
    version = raw.pop("version", None)
    try:
        spec = get_method(str(name))
        if version is not None and version != spec.config_cls.VERSION:
            raise ConfigError(
                f"'version' {version} is not supported for method '{name}' (this llmcompress has version "
                f"{spec.config_cls.VERSION})", "version")
        return spec.config_cls.from_dict(raw)
    except ConfigError as exc:
        raise ConfigError(f"{where} ({name}): {exc}", exc.key) from None


def builtin_recipes() -> dict[str, Path]:
    """Name -> path of the recipes shipped in ``recipes/``."""
    if not RECIPES_DIR.is_dir():
        return {}
    return {p.stem: p for p in sorted(RECIPES_DIR.glob("*.yaml"))}


def describe(path: Path) -> str:
    """The one-line description of a recipe file (its ``description``)."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
        return str(data.get("description", "")).strip().splitlines()[0] if data.get("description") else ""
    except (OSError, yaml.YAMLError):
        return "(unreadable)"
