"""GPTQ applied to a model through the shared layer-by-layer calibration engine."""

from __future__ import annotations

import logging
import time

import torch
from torch import nn

from ...calibration import run_layerwise
from ...context import Context
from ...errors import DataError
from ...modeling import finished_submodule, sequential_groups
from ...models import DTYPES
from ...registry import register_method
from ..quant.record import QuantRecord, set_record
from ..quant.select import plan
from .config import GPTQConfig
from .gptq import accumulate_hessian, gptq_quantize

logger = logging.getLogger(__name__)


class SharedHessians:
    """Hessians of the modules of one group; modules fed the very same input tensor
    (q/k/v, gate/up) share one Hessian, accumulated once."""

    def __init__(self, members: int):
        self.members = members
        self.owner: dict[str, int] = {}
        self.leader: dict[int, str] = {}
        self.first_input: dict[int, torch.Tensor] = {}
        self.H: dict[int, torch.Tensor] = {}
        self.count: dict[int, int] = {}

    def add(self, name: str, x: torch.Tensor) -> None:
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
        self.H[key], self.count[key] = accumulate_hessian(self.H.get(key), x, self.count[key])


def _check_weights(model: nn.Module, names) -> None:
    mods = dict(model.named_modules())
    for name in names:
        if not torch.isfinite(mods[name].weight).all():
            raise DataError(f"layer '{name}' has NaN or infinite weights; GPTQ cannot quantize it. Check the checkpoint.")


@register_method("gptq", GPTQConfig)
def apply_gptq(model: nn.Module, cfg: GPTQConfig, ctx: Context):
    """Quantize the selected Linear layers with GPTQ, in place; returns the model."""
    todo, skipped = plan(model, cfg)
    _check_weights(model, todo)
    ids = ctx.calibration_ids()
    stats = {"layers": {}, "skipped_layers": skipped}
    calib_dtype = None if cfg.calibration_dtype == "auto" else DTYPES[cfg.calibration_dtype]

    def process(index: int, prefix: str, layer: nn.Module, runner):
        params = dict(layer.named_parameters())
        master = {n: p.data for n, p in params.items()}  # full-precision weights GPTQ reads and writes
        cast = calib_dtype is not None and any(t.dtype != calib_dtype for t in master.values())

        def forward_weights():
            # Forwards run in the calibration dtype on copies; GPTQ keeps the master weights.
            if cast:
                for n, p in params.items():
                    p.data = master[n].to(calib_dtype)

        forward_weights()
        groups = sequential_groups(layer) if cfg.true_sequential else [[m for g in sequential_groups(layer) for m in g]]
        for group in groups:
            members = {n: m for n, m in group if f"{prefix}.{n}" in todo}
            if not members:
                continue
            bank = SharedHessians(len(members))
            runner.observe(members, bank.add)
            batches: dict[tuple, list[str]] = {}
            for n in members:
                batches.setdefault((bank.owner[n], todo[f"{prefix}.{n}"]), []).append(n)
            for (key, args), names in batches.items():
                t0 = time.perf_counter()
                weights = [master[f"{n}.weight"] for n in names]
                res = gptq_quantize(torch.cat(weights), bank.H[key], args, block_size=cfg.block_size,
                                    damp=cfg.damp, act_order=cfg.act_order, observer=cfg.observer,
                                    dtype=weights[0].dtype, scale_dtype=ctx.scale_dtype,
                                    name=f"{prefix}.{names[0]}")
                row = 0
                for n, w in zip(names, weights):
                    r = w.shape[0]
                    w.copy_(res.weight[row : row + r])
                    zero = res.zero[row : row + r].clone() if res.zero is not None else None
                    set_record(members[n], QuantRecord(args, res.scale[row : row + r].clone(), zero, "gptq"))
                    row += r
                stats["layers"][f"{prefix}.{'+'.join(names)}"] = {
                    "loss": res.loss, "damp": res.damp, "seconds": round(time.perf_counter() - t0, 3)}
            forward_weights()  # later groups see this group's quantized weights
            for n in members:
                done = finished_submodule(layer, n)
                if done is not None:
                    runner.freeze(done)  # e.g. attention: later passes replay its outputs
        if cast:
            return lambda: [setattr(p, "data", master[n]) for n, p in params.items()]
        return None

    stats["layer_seconds"] = run_layerwise(model, ids, process, ctx.device, batch_size=cfg.batch_size, desc="gptq",
                                           dtype=calib_dtype)
    ctx.notes["gptq"] = stats
    return model
