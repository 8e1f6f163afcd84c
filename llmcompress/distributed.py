"""Running under ``accelerate launch`` / ``torchrun``: one process per device.

llmcompress has no distributed code of its own: transformers' ``Trainer`` (through accelerate)
does the data-parallel training (DDP). What the pipeline itself must do differently with
several processes is small:

- each process works on its own device (``cuda:LOCAL_RANK``);
- work whose result is shared on disk (the teacher's logit cache) is done by the main process
  while the others wait, then read by all;
- only the main process measures, writes the output and pushes it.
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


def check_launch() -> None:
    """Refuse launches that shard the student's parameters (FSDP, DeepSpeed), before any work.

    After such a training run each process holds only its shard; the main process alone would
    then evaluate and write the model, and a forward pass of a sharded model needs every process
    (it would wait forever) while a save would write one shard. Gathering the full weights back
    is not implemented, so the run is refused instead of hanging after the training.
    """
    from .errors import ConfigError

    for var, name in SHARDING_LAUNCHES.items():
        if os.environ.get(var, "false").lower() in ("true", "1"):
            raise ConfigError(
                f"this launch uses {name} ({var}=true), which shards the model across processes; llmcompress "
                "cannot yet gather a sharded student to evaluate and write it. Launch data-parallel instead: "
                "`accelerate launch --multi_gpu` (DDP) or `torchrun`, with a model that fits on one GPU", "launcher")


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
