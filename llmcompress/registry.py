"""Method registry and the base class of method configs.

A method is a typed config dataclass plus one ``apply(model, config, context)``
function. Methods register themselves where they are defined, with
:func:`register_method`; recipe keys (``method: gptq``) are registry names, so no
code outside a method's folder branches on method names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar

from .config import ConfigBase
from .errors import ConfigError


@dataclass
class MethodConfig(ConfigBase):
    """Base class of every method config.

    ``VERSION`` is bumped when a field changes meaning; recipes record it.
    """

    METHOD: ClassVar[str] = ""
    VERSION: ClassVar[int] = 1
    # How the method changes the model, for model cards and reports:
    # "quantized", "pruned", "distilled" or "converted".
    KIND: ClassVar[str] = "converted"
    # True for methods that act when the model is loaded (bitsandbytes): the
    # runner passes ``load_kwargs()`` to ``from_pretrained`` instead of calling apply.
    AT_LOAD: ClassVar[bool] = False
    # True for methods that need calibration text (GPTQ, Wanda, SparseGPT).
    NEEDS_CALIBRATION: ClassVar[bool] = False
    # True for layer-by-layer methods that can run on a model whose decoder layers are read
    # from the checkpoint and written out one at a time (``output.low_memory``).
    STREAMABLE: ClassVar[bool] = False
    # True for methods that train the model through transformers' Trainer (distillation): the
    # only stages a launch that shards the model (FSDP) can serve.
    TRAINS: ClassVar[bool] = False

    @classmethod
    def _label(cls) -> str:
        return f"method '{cls.METHOD}'"

    def check_recipe(self, recipe) -> None:
        """Validate this stage against the rest of the recipe (other stages, output format).

        Raise :class:`ConfigError` for combinations that cannot work; called before any
        model is loaded.
        """

    def check_device(self, device) -> None:
        """Raise :class:`ConfigError` if this stage cannot run on ``device``; called before loading."""

    def check_launch(self, sharding: str | None) -> None:
        """Raise :class:`ConfigError` if this stage cannot run under the current launcher;
        ``sharding`` names the sharding the launch asks for ("FSDP") or is None. Called before loading."""

    def check_model(self, config, source=None) -> None:
        """Raise :class:`ConfigError` if this stage cannot apply to a model with this transformers
        config (e.g. a ratio that leaves nothing); called before the weights load. ``source`` is
        the model's :class:`~llmcompress.models.ModelSource` (None for a model passed in memory)."""

    def load_kwargs(self) -> dict:
        """``from_pretrained`` keyword arguments of an ``AT_LOAD`` method."""
        return {}

    def after_load(self, model, ctx=None) -> None:
        """Called right after an ``AT_LOAD`` method's model is loaded, before anything runs it."""

    def to_dict(self) -> dict[str, Any]:
        """The config as a plain dict, method name first."""
        return {"method": self.METHOD, **super().to_dict()}


@dataclass(frozen=True)
class MethodSpec:
    """A registered method: its config class and its apply function."""

    name: str
    config_cls: type[MethodConfig]
    apply: Callable[..., Any]


_REGISTRY: dict[str, MethodSpec] = {}


def register_method(name: str, config_cls: type[MethodConfig]):
    """Decorator: register ``apply(model, config, context)`` under ``name``."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in _REGISTRY and _REGISTRY[name].apply is not fn:
            raise RuntimeError(f"method '{name}' registered twice")
        config_cls.METHOD = name
        _REGISTRY[name] = MethodSpec(name, config_cls, fn)
        return fn

    return deco


def get_method(name: str) -> MethodSpec:
    """Look up a method by recipe name, with the list of known names on failure."""
    _ensure_methods_loaded()
    if name not in _REGISTRY:
        raise ConfigError(
            f"unknown method '{name}'; available methods: {', '.join(available_methods())}",
            key="method",
        )
    return _REGISTRY[name]


def available_methods() -> list[str]:
    _ensure_methods_loaded()
    return sorted(_REGISTRY)


def _ensure_methods_loaded() -> None:
    # Importing the package registers every built-in method.
    from . import methods  # noqa: F401
