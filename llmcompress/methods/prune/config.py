"""Options shared by the unstructured pruning methods (magnitude, Wanda, SparseGPT)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ...config import check_choice, check_range
from ...errors import ConfigError
from ...modeling import DEFAULT_IGNORE, linear_layers
from ...registry import MethodConfig
from .masks import parse_pattern


@dataclass
class OWLOptions:
    """Options of the outlier-weighted layer-wise allocation (OWL, :mod:`.owl`)."""

    # Both chosen on selection text, for magnitude and for Wanda scores, on SmolLM2-135M and
    # Qwen2.5-Coder-0.5B at 50% (scripts/select_owl.py; BENCHMARKS.md, bench:owl_select).
    owl_threshold: float = field(default=10.0, metadata={"help": "owl: a weight is an outlier when its score (|w|, or Wanda's |w| ||x||) exceeds this many times its matrix's mean score"})
    owl_lambda: float = field(default=0.08, metadata={"help": "owl: largest difference between a decoder layer's sparsity and 'sparsity'"})

    def check_owl(self, sparsity: float, pattern: str | None, key: str, value: str) -> None:
        """Errors for OWL options that cannot work; ``key: value`` is the option that turned OWL on."""
        if pattern:
            raise ConfigError(f"pattern {pattern} fixes the sparsity of every group of inputs; it cannot be "
                              f"combined with {key} {value} (a sparsity per decoder layer): drop one of them", key)
        if self.owl_threshold <= 0:
            raise ConfigError(f"'owl_threshold' must be > 0; got {self.owl_threshold}", "owl_threshold")
        room = min(sparsity, 1 - sparsity)
        if not 0 <= self.owl_lambda < room or (self.owl_lambda == 0 and room == 0):
            raise ConfigError(f"'owl_lambda' must be in [0, {room:g}) so that every layer's sparsity stays in "
                              f"[0, 1) around sparsity {sparsity}; got {self.owl_lambda}", "owl_lambda")


@dataclass
class CalibratedAllocation(OWLOptions):
    """How the sparsity is split across decoder layers, for the calibrated pruners (Wanda, SparseGPT)."""

    allocation: str = field(default="uniform", metadata={"help": "uniform (every layer at 'sparsity') | owl (a sparsity per decoder layer from its share of outlier Wanda scores)"})

    def check_allocation(self) -> None:
        check_choice("allocation", self.allocation, ("uniform", "owl"))
        if self.allocation == "owl":
            self.check_owl(self.sparsity, self.pattern, "allocation", "owl")


@dataclass
class FirstTokenWeight:
    """How much the first position of each calibration sequence counts, for Wanda and SparseGPT.

    The first position carries the attention sink's massive activation (Sun et al., 2024,
    "Massive activations in large language models"; Xiao et al., 2024, StreamingLLM), which a
    plain mean over 16k calibration tokens all but ignores. Each method sets its own default
    (``FIRST_TOKEN_WEIGHT``), chosen for unstructured sparsity with 512-token calibration windows
    on text no benchmark evaluates (scripts/select_sink.py; BENCHMARKS.md, bench:sink_select), and
    for N:M patterns (``FIRST_TOKEN_WEIGHT_NM``), chosen the same way at 2:4
    (bench:sink_select_2of4), where a weight fitted to unstructured sparsity hurts: x32 cost Wanda
    2:4 on SmolLM2-135M 8-13% perplexity (bench:prune).
    """

    FIRST_TOKEN_WEIGHT: ClassVar[float] = 1.0
    FIRST_TOKEN_WEIGHT_NM: ClassVar[float] = 1.0

    first_token_weight: float | None = field(default=None, metadata={
        "help": "how many tokens the first position of each calibration sequence counts as in the calibration "
                "statistics (Wanda's input norms, SparseGPT's Hessian, OWL's outlier count); 1: the papers' plain "
                "mean; default: the method's choice on selection text (with 512-token calibration windows) for "
                "unstructured sparsity, wanda 32 and sparsegpt 512 (BENCHMARKS.md bench:sink_select), and for N:M "
                "patterns, 8 for both (bench:sink_select_2of4)"})

    def check_first_token_weight(self, default: float | None = None) -> None:
        """Resolve the default (``default``, else the class's for N:M patterns or for unstructured
        sparsity) and check the range."""
        if self.first_token_weight is None:
            if default is None:
                default = self.FIRST_TOKEN_WEIGHT_NM if getattr(self, "pattern", None) else self.FIRST_TOKEN_WEIGHT
            self.first_token_weight = default
        check_range("first_token_weight", self.first_token_weight, 1.0)


@dataclass
class SparsityConfig(MethodConfig):
    """``sparsity`` (fraction removed) or an N:M ``pattern``, on the selected Linear layers."""

    KIND: ClassVar[str] = "pruned"

    sparsity: float | None = field(default=None, metadata={"help": "fraction of the targeted weights set to zero, in [0, 1) (default 0.5, or the pattern's)"})
    pattern: str | None = field(default=None, metadata={"help": "N:M semi-structured sparsity, e.g. 2:4 (N kept in every M inputs)"})
    targets: list[str] = field(default_factory=lambda: ["Linear"], metadata={"help": "module suffixes / re: regexes"})
    ignore: list[str] = field(default_factory=lambda: list(DEFAULT_IGNORE), metadata={"help": "modules left dense"})

    def __post_init__(self):
        if self.pattern is not None:
            n, m = parse_pattern(self.pattern)
            implied = 1 - n / m
            if self.sparsity is not None and abs(self.sparsity - implied) > 1e-9:
                raise ConfigError(f"pattern {self.pattern} removes {implied:g} of the weights but sparsity is "
                                  f"{self.sparsity}: drop 'sparsity' or set it to {implied:g}", "sparsity")
            self.sparsity = implied
        if self.sparsity is None:
            self.sparsity = 0.5
        if not 0 <= self.sparsity < 1:
            raise ConfigError(f"'sparsity' must be in [0, 1); got {self.sparsity}", "sparsity")

    @property
    def nm(self) -> tuple[int, int] | None:
        return parse_pattern(self.pattern) if self.pattern else None

    def select(self, model) -> dict:
        """The Linear layers to prune; checks that an N:M pattern fits every one of them."""
        targets = None if self.targets in (["Linear"], []) else self.targets
        layers = linear_layers(model, targets, self.ignore)
        if not layers:
            raise ConfigError(f"targets {self.targets} (ignore {self.ignore}) select no Linear layer", "targets")
        if self.nm:
            m = self.nm[1]
            bad = [n for n, mod in layers.items() if mod.in_features % m]
            if bad:
                raise ConfigError(f"pattern {self.pattern}: {len(bad)} layers have input widths not divisible by "
                                  f"{m} ({bad[0]}, ...); ignore them or pick another M", "pattern")
        return layers
