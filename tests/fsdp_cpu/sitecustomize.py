"""Test harness only: let accelerate run FSDP on CPU processes (gloo).

accelerate turns FSDP on only for multi-GPU launches: for CPU processes it keeps
``DistributedType.MULTI_CPU`` and ignores ``ACCELERATE_USE_FSDP``. torch's FSDP2
(``fully_shard``) itself runs on CPU under gloo, so lifting that one gate lets the tests drive the
real sharding, training and gathering code on a machine without GPUs. The tests put this folder
on ``PYTHONPATH`` of the launched processes; nothing else imports it. With
``LLMCOMPRESS_TEST_INTERRUPT_AT_STEP=N`` it also kills the run once the step-N checkpoint is
written, as a preempted job would be.
"""

import os

if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
    import accelerate.state as _state
    from accelerate.utils import DistributedType

    _init = _state.AcceleratorState.__init__

    def _init_with_fsdp_on_cpu(self, *args, **kwargs):
        _init(self, *args, **kwargs)
        # AcceleratorState re-reads PartialState (MULTI_CPU) on every construction: restore FSDP each time
        if self.distributed_type == DistributedType.MULTI_CPU:
            if kwargs.get("fsdp_plugin") is not None:
                self.fsdp_plugin = kwargs["fsdp_plugin"]
            if getattr(self, "fsdp_plugin", None) is not None:
                self.distributed_type = DistributedType.FSDP

    _state.AcceleratorState.__init__ = _init_with_fsdp_on_cpu

_stop = os.environ.get("LLMCOMPRESS_TEST_INTERRUPT_AT_STEP")
if _stop:  # the resume test: die like a killed job once the step-N checkpoint is written
    from transformers import TrainerCallback

    from llmcompress.methods.distill import trainer as _trainer

    class _Interrupt(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == int(_stop):
                import torch.distributed as dist

                dist.barrier()  # every process has finished writing its part of the checkpoint
                os._exit(3)

    _trainer_init = _trainer.DistillTrainer.__init__

    def _init_with_interrupt(self, *args, **kwargs):
        _trainer_init(self, *args, **kwargs)
        self.add_callback(_Interrupt())

    _trainer.DistillTrainer.__init__ = _init_with_interrupt
