"""Config fields shared by every weight-quantization method (RTN, GPTQ)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ...config import check_choice, check_range
from ...errors import ConfigError
from ...modeling import DEFAULT_IGNORE
from ...registry import MethodConfig
from .grid import QuantArgs

OBSERVERS = ("minmax", "mse")


@dataclass
class WeightQuantConfig(MethodConfig):
    """Integer weight quantization of Linear layers (weights only, activations stay float).

    ``overrides`` gives other settings to some layers (mixed precision), e.g.
    ``{"down_proj": {"bits": 8}}``; keys are module-name suffixes or ``re:`` regexes.
    """

    KIND: ClassVar[str] = "quantized"

    bits: int = field(default=4, metadata={"help": "weight bits: 2..8"})
    group_size: int = field(default=128, metadata={"help": "columns per scale; -1 = per output channel"})
    sym: bool = field(default=True, metadata={"help": "symmetric grid (no zero point)"})
    observer: str = field(default="minmax", metadata={"help": "scale search: minmax | mse (clipping search)"})
    targets: list[str] = field(default_factory=lambda: ["Linear"], metadata={"help": "module suffixes / re: regexes; 'Linear' = all"})
    ignore: list[str] = field(default_factory=lambda: list(DEFAULT_IGNORE), metadata={"help": "modules left unquantized"})
    overrides: dict = field(default_factory=dict, metadata={"help": "pattern -> {bits, group_size, sym} (mixed precision)"})
    strict: bool = field(default=False, metadata={"help": "error (instead of skip + warning) on widths the group size does not divide"})

    def __post_init__(self):
        check_range("bits", self.bits, 2, 8)
        if self.group_size != -1 and self.group_size < 1:
            raise ConfigError(f"'group_size' must be -1 (per channel) or a positive integer; got {self.group_size}", "group_size")
        check_choice("observer", self.observer, OBSERVERS)
        for pattern, over in self.overrides.items():
            if not isinstance(over, dict) or set(over) - {"bits", "group_size", "sym"}:
                raise ConfigError(
                    f"'overrides.{pattern}' must be a mapping with keys among bits, group_size, sym; got {over!r}",
                    "overrides")
            if "bits" in over:
                check_range(f"overrides.{pattern}.bits", over["bits"], 2, 8)

    def check_recipe(self, recipe) -> None:
        asym = not self.sym or any(o.get("sym") is False for o in self.overrides.values())
        if asym and recipe.output.format == "compressed-tensors":
            raise ConfigError(
                "asymmetric weights (sym: false) written as compressed-tensors pack-quantized do not load "
                "in transformers 5.17-5.25 (weight_zero_point shape mismatch); use sym: true, or "
                "output: {format: gptq}", "sym")

    @property
    def module_targets(self) -> list[str] | None:
        return None if self.targets in (["Linear"], []) else self.targets

    def args_for(self, name: str) -> QuantArgs:
        """The grid for module ``name`` (the last matching override wins)."""
        from ...modeling import matches

        values = {"bits": self.bits, "group_size": self.group_size, "sym": self.sym}
        for pattern, over in self.overrides.items():
            if matches(name, [pattern]):
                values.update(over)
        return QuantArgs(**values)
