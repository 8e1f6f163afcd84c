"""What a method's ``apply`` receives besides the model and its config."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch


@dataclass
class Context:
    """Shared state of one compression run.

    Attributes:
        tokenizer: the model's tokenizer.
        device: where calibrated methods run their layer-by-layer work.
        calibration: callable returning ``[num_samples, seq_len]`` token ids (loaded once,
            lazily, so methods without calibration never read text).
        notes: per-stage facts for the report (skipped layers, timings, losses).
        scale_dtype: dtype quantization scales are stored in (set from the output format).
    """

    tokenizer: Any = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    calibration: Callable[[], torch.Tensor] | None = None
    notes: dict[str, Any] = field(default_factory=dict)
    # Quantization scales are rounded to this dtype (the output format's), so that the
    # in-memory model equals what a loader rebuilds; None: the weight's dtype.
    scale_dtype: torch.dtype | None = None
    # Extra transformers TrainerCallbacks for training methods (distillation), e.g. evaluation.
    callbacks: list = field(default_factory=list)
    # low_memory: the source and sink of decoder layers (llmcompress.streaming.LayerStream)
    layer_stream: Any = None

    def calibration_ids(self) -> torch.Tensor:
        from .errors import DataError

        if self.calibration is None:
            raise DataError("this method needs calibration data; give the recipe a 'calibration:' section")
        return self.calibration()
