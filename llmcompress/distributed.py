"""Running under ``accelerate launch`` / ``torchrun``: one process per device.

llmcompress has no distributed code of its own: transformers' ``Trainer`` (through accelerate)
does the data-parallel training (DDP / FSDP, as ``accelerate config`` says). What the
pipeline itself must do differently with several processes is small:

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


@contextmanager
def main_process_first():
    """The main process runs the block first; the others enter it once it has finished."""
    if world_size() == 1:
        with nullcontext():
            yield
        return
    from accelerate import PartialState

    with PartialState().main_process_first():
        yield
