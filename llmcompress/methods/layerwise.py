"""Calibrated methods' common driver on top of the calibration engine (GPTQ, SparseGPT, Wanda).

For each decoder layer (:func:`llmcompress.calibration.run_layerwise`), and inside it for
each true-sequential group (q/k/v, o, gate/up, down), the driver collects a statistic of
the selected modules' inputs (a Hessian, column norms), hands the weights to the method's
``update`` to modify in place, and makes later groups see the modified weights. Modules fed
the very same input tensor (q/k/v, gate/up) share one statistic, collected once.

Forwards run in the calibration dtype (bf16 by default) on copies of the weights; the
method reads and writes the full-precision master weights.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from ..calibration import CALIBRATION_DTYPE_HELP, CALIBRATION_DTYPES, resolve_calibration_dtype, run_layerwise
from ..config import check_choice, check_range
from ..errors import DataError
from ..modeling import OUTPUT_LINEAR, finished_submodules, sequential_groups

# accumulate(state or None, inputs [..., cols], count) -> (state, count); with reference=True
# accumulate(state or None, inputs, count, reference inputs) (the unmodified model's, same shape)
Accumulate = Callable[..., tuple[Any, int]]
# update(names, modules, master weights, statistic, option) -> per-call stats dict or None
Update = Callable[[list[str], list[nn.Module], list[torch.Tensor], Any, Any], dict | None]


@dataclass
class LayerwiseOptions:
    """Recipe options of every method calibrated through :func:`calibrate_layerwise`."""

    true_sequential: bool = field(default=True, metadata={"help": "process q/k/v, then o, then gate/up, then down, each on inputs that carry the earlier changes"})
    batch_size: int = field(default=8, metadata={"help": "calibration samples per layer forward"})
    # bf16 forwards are ~6x faster than fp32 on CPUs with AMX and on GPUs, and ~6x slower on
    # AVX2-only CPUs, which emulate them ("fast" picks per device); on SmolLM2-135M GPTQ gave the
    # same perplexity in both (22.71 vs 22.72, 32 x 512 tokens).
    calibration_dtype: str = field(default="fast", metadata={"help": CALIBRATION_DTYPE_HELP})

    def check_layerwise_options(self) -> None:
        check_range("batch_size", self.batch_size, 1)
        check_choice("calibration_dtype", self.calibration_dtype, CALIBRATION_DTYPES)


class SharedInputs:
    """Input statistics of one group's modules, one per distinct input tensor."""

    def __init__(self, members: int, accumulate: Accumulate, lone: dict[str, nn.Module] | None = None):
        self.members, self.accumulate = members, accumulate
        # Modules known to have an input of their own (o_proj, down_proj): an ``accumulate`` with
        # ``takes_weight`` also gets their weight, to keep a statistic projected on it (GPTAQ).
        self.lone = lone if getattr(accumulate, "takes_weight", False) and lone else {}
        self.owner: dict[str, int] = {}
        self.leader: dict[int, str] = {}
        self.first_input: dict[int, torch.Tensor] = {}
        self.stat: dict[int, Any] = {}
        self.count: dict[int, int] = {}

    def add(self, name: str, x: torch.Tensor, *ref: torch.Tensor) -> None:
        if name not in self.owner:
            key = next((k for k, t in self.first_input.items() if t is x), None)
            if key is None:
                key = len(self.leader)
                self.leader[key], self.first_input[key], self.count[key] = name, x, 0
            self.owner[name] = key
        key = self.owner[name]
        if self.leader[key] != name:
            return
        if len(self.owner) == self.members:
            self.first_input.clear()  # every module has been seen: sharing is settled
        extra = {"weight": self.lone[name].weight} if name in self.lone else {}
        self.stat[key], self.count[key] = self.accumulate(self.stat.get(key), x, self.count[key], *ref, **extra)


def check_finite(model: nn.Module, names, method: str) -> None:
    mods = dict(model.named_modules())
    for name in names:
        weight = mods[name].weight
        if weight.is_meta:  # low_memory: checked as each layer is read
            continue
        if not torch.isfinite(weight).all():
            raise DataError(f"layer '{name}' has NaN or infinite weights; {method} cannot process it. "
                            "Check the checkpoint.")


def calibrate_layerwise(model: nn.Module, ids: torch.Tensor, device, todo: dict[str, Any], accumulate: Accumulate,
                        update: Update, *, calibration_dtype: str = "fast", true_sequential: bool = True,
                        batch_size: int = 8, desc: str = "calibrating", stream=None, reference: bool = False) -> dict:
    """Run ``update`` on every module of ``todo`` (full name -> option), layer by layer.

    Modules that share an input and have equal options are handed to ``update`` together
    (GPTQ stacks their rows). ``stream``, ``reference``: see :func:`~llmcompress.calibration.run_layerwise`
    (with ``reference``, ``accumulate`` also receives the unmodified model's inputs).
    Returns ``{"layers": {names: stats}, "layer_seconds": [...]}``.
    """
    calib_dtype = resolve_calibration_dtype(calibration_dtype, device)
    stats: dict = {"layers": {}}

    def process(index: int, prefix: str, layer: nn.Module, runner):
        params = dict(layer.named_parameters())
        master = {n: p.data for n, p in params.items()}
        cast = calib_dtype is not None and any(t.dtype != calib_dtype for t in master.values())

        def forward_weights():
            if cast:
                for n, p in params.items():
                    p.data = master[n].to(calib_dtype)

        forward_weights()
        for name in finished_submodules(layer):
            runner.freeze(name)  # the first norm: computed once per batch, replayed on later passes
        groups = sequential_groups(layer)
        if not true_sequential:
            groups = [[m for g in groups for m in g]]
        for g, group in enumerate(groups):
            members = {n: m for n, m in group if f"{prefix}.{n}" in todo}
            if not members:
                continue
            bank = SharedInputs(len(members), accumulate,
                                lone={n: m for n, m in members.items() if n in OUTPUT_LINEAR.values()})
            # In true-sequential order everything upstream of o_proj / down_proj is final when
            # they are observed, so their inputs are too: keep them, and attention's and the
            # MLP's outputs later cost one matmul each (OUTPUT_LINEAR).
            keep = tuple(n for n in members if n in OUTPUT_LINEAR.values()) if true_sequential else ()
            runner.observe(members, bank.add, keep=keep)
            batches: dict[tuple, list[str]] = {}
            for n in members:
                batches.setdefault((bank.owner[n], repr(todo[f"{prefix}.{n}"])), []).append(n)
            for (key, _), names in batches.items():
                t0 = time.perf_counter()
                full = [f"{prefix}.{n}" for n in names]
                info = update(full, [members[n] for n in names], [master[f"{n}.weight"] for n in names],
                              bank.stat[key], todo[full[0]]) or {}
                info["seconds"] = round(time.perf_counter() - t0, 3)
                stats["layers"][f"{prefix}.{'+'.join(names)}"] = info
            forward_weights()  # later groups see this group's new weights
            for n in members:
                for name in finished_submodules(layer, n):
                    # e.g. attention: later passes replay its outputs (from o_proj's kept inputs)
                    through = OUTPUT_LINEAR.get(name)
                    runner.freeze(name, through=through if through in keep else None, keep_outputs=g < len(groups) - 1)
        if cast:
            return lambda: [setattr(p, "data", master[n]) for n, p in params.items()]
        return None

    stats["layer_seconds"] = run_layerwise(model, ids, process, device, batch_size=batch_size, desc=desc,
                                           dtype=calib_dtype, stream=stream, reference=reference)
    return stats
