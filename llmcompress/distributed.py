"""Running under ``accelerate launch`` / ``torchrun``: one process per device.

llmcompress has no distributed code of its own: transformers' ``Trainer`` (through accelerate)
does the data-parallel training (DDP). What the pipeline itself must do differently with
several processes is small:

- each process works on its own device (``cuda:LOCAL_RANK``);
- work whose result is shared on disk (the teacher's logit cache) is done by the main process
  while the others wait, then read by all;
- only the main process measures, writes the output and pushes it;
- under FSDP each process ends the training holding a shard of the student: the full weights
  are gathered into a plain model on the main process (:func:`gather_sharded`).
"""

from __future__ import annotations

import os
from contextlib import contextmanager, nullcontext

import torch


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def local_device() -> torch.device:
    """This process's device: ``cuda:LOCAL_RANK`` under a launcher, ``cuda`` or ``cpu`` otherwise."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    if world_size() > 1:
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")
    return torch.device("cuda")


# accelerate's launcher says through these variables that it will shard the model across processes.
SHARDING_LAUNCHES = {"ACCELERATE_USE_FSDP": "FSDP", "ACCELERATE_USE_DEEPSPEED": "DeepSpeed"}


def sharding() -> str | None:
    """The sharding this launch asks for ("FSDP", "DeepSpeed"), or None."""
    for var, name in SHARDING_LAUNCHES.items():
        if os.environ.get(var, "false").lower() in ("true", "1"):
            return name
    return None


def check_launch(recipe) -> None:
    """Refuse, before any work, launches whose sharding the recipe cannot use.

    FSDP shards only what the Trainer trains. After training every process holds a shard; they
    gather the full weights together and the main process alone continues (evaluates, writes),
    so a stage after the training one would have no model on the other processes: refused, as
    is a recipe that trains nothing (FSDP would shard nothing; run it in one process).
    DeepSpeed is refused: gathering its partitioned parameters is not implemented. Every launch,
    sharded or not, runs each stage's own :meth:`~llmcompress.registry.MethodConfig.check_launch`.
    """
    from .errors import ConfigError

    kind = sharding()
    if kind is None:
        for stage in recipe.stages:  # data-parallel or one process: the stages' own limits
            stage.check_launch(None)
        return
    if kind != "FSDP":
        raise ConfigError(
            f"this launch uses {kind}, which shards the model across processes; llmcompress gathers a sharded "
            "student only under FSDP. Launch with `accelerate launch --use_fsdp`, or data-parallel: "
            "`accelerate launch --multi_gpu` (DDP) or `torchrun`", "launcher")
    trains = [i for i, s in enumerate(recipe.stages) if s.TRAINS]
    if not trains:
        raise ConfigError(f"this launch uses FSDP (ACCELERATE_USE_FSDP=true), but recipe '{recipe.name}' trains "
                          "nothing (no distill stage): FSDP shards training only; run it in one process", "launcher")
    after = recipe.stages[trains[-1] + 1:]
    if after:
        raise ConfigError(f"under FSDP the training stage must be the recipe's last (the gathered model lives on "
                          f"the main process only), but '{after[0].METHOD}' follows it: run the later stages in a "
                          "second, single-process run on the written output", "launcher")
    for stage in recipe.stages:
        stage.check_launch(kind)


def gather_sharded(trainer, cls, dtype: torch.dtype):
    """After an FSDP training run: the full trained weights in a plain ``cls`` model on the main process.

    Every process must call it (the gather is a collective). accelerate's ``get_state_dict``
    returns the full state dict on the main process only (FSDP2: ``full_state_dict`` with
    ``cpu_offload``; FSDP1: ``FULL_STATE_DICT`` with ``rank0_only``), which is loaded into a
    fresh instance of the student's class and config. The other processes get None: no stage
    follows training under FSDP (:func:`check_launch`) and they neither measure nor write.
    """
    full = trainer.accelerator.get_state_dict(trainer.model)
    if not is_main():
        return None
    model = trainer.accelerator.unwrap_model(trainer.model)
    from transformers.initialization import no_init_weights

    with no_init_weights():  # every weight is overwritten below
        plain = cls._from_config(model.config, dtype=dtype)
    missing, unexpected = plain.load_state_dict(full, strict=False)
    plain.tie_weights()
    # a tied weight (lm_head sharing the embedding) may be gathered under one name only
    tensors = plain.state_dict(keep_vars=True)
    loaded = {id(t) for k, t in tensors.items() if k in full}
    missing = [k for k in missing if id(tensors[k]) not in loaded]
    if missing or unexpected:
        raise RuntimeError(f"the gathered FSDP state dict does not match {cls.__name__}: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
    plain.generation_config = model.generation_config
    return plain.to(local_device())


def _state():
    """accelerate's process state for this launch.

    ``PartialState()`` alone does not see a CPU launch (torchrun without GPUs): it reports one
    process and every rank believes it is the main one, so "main first" ran the block in all
    ranks at once (each built the same logit cache into the same folder). ``cpu=True`` makes it
    join the gloo group that torchrun describes.
    """
    from accelerate import PartialState

    return PartialState(cpu=local_device().type == "cpu")


@contextmanager
def main_process_first():
    """The main process runs the block first; the others enter it once it has finished."""
    if world_size() == 1:
        with nullcontext():
            yield
        return
    state = _state()
    if state.num_processes != world_size():  # never silently run the block in every rank at once
        raise RuntimeError(f"accelerate sees {state.num_processes} process(es) but the launcher started "
                           f"{world_size()}: cannot let the main process go first")
    with state.main_process_first():
        yield


def shutdown() -> None:
    """Leave the process group cleanly at the end of a launched run.

    Without it a rank that has finished (the secondary ones skip measuring and writing) exits
    with gloo / NCCL still holding the group, and the interpreter's teardown of those threads
    can abort the process. Local, not a collective: the main process may still be writing.
    """
    import torch.distributed as dist

    if world_size() > 1 and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
