"""GPTQ recipe stage."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ...config import check_range
from ...errors import ConfigError
from ..layerwise import LayerwiseOptions
from ..quant.config import WeightQuantConfig


@dataclass
class GPTQConfig(LayerwiseOptions, WeightQuantConfig):
    """GPTQ int4/int8 weights (Frantar et al., 2022), calibrated layer by layer.

    Recipe::

        - method: gptq
          bits: 4
          group_size: 128      # 64 for SmolLM2-135M (width 576)
          act_order: true      # static groups: no g_idx at run time
          damp: 0.01
        calibration: {source: wiki_calib, num_samples: 128, seq_len: 512}
    """

    NEEDS_CALIBRATION: ClassVar[bool] = True
    STREAMABLE: ClassVar[bool] = True

    # GPTQ's error feedback works best from MSE-clipped scales: on SmolLM2-135M (int4 g64,
    # 128 x 512 tokens) perplexity 21.26 with mse against ~22.7 with minmax.
    observer: str = field(default="mse", metadata={"help": "scale search: mse (clipping search) | minmax"})

    act_order: bool = field(default=True, metadata={"help": "quantize columns by decreasing Hessian diagonal (static groups)"})
    damp: float = field(default=0.01, metadata={"help": "dampening, fraction of the mean Hessian diagonal"})
    block_size: int = field(default=128, metadata={"help": "columns per lazy-update block"})
    gptaq_alpha: float = field(default=0.0, metadata={"help": "GPTAQ asymmetric calibration (Li et al., 2025): fit the quantized layer to the full-precision model's outputs, not only to its own inputs; 0 = plain GPTQ, 1 = the full asymmetric target (doubles calibration forwards and stored hidden states)"})

    # GPTAQ's target W + alpha W D (H + lambda I)^-1 is a ridge regression. The column loop's 1%
    # under-regularizes it: nearly singular Hessians (Qwen2.5's early o_proj) amplify D's noise.
    # Chosen on selection text, never the evaluation texts (calibration windows left unused and
    # python_code; 0.01 / 0.1 / 1 / 3 tried): 0.1 beat 0.01 on both texts of Qwen2.5-Coder-0.5B and
    # on SmolLM2-135M's code (its Wikipedia windows: a tie within rounding noise; BENCHMARKS.md).
    gptaq_damp: float | None = field(default=0.1, metadata={"help": "dampening of GPTAQ's shifted target (its least-squares solve), fraction of the mean Hessian diagonal; null: the same as damp"})

    # Refitting the scales to the output error once the codes are chosen lowered GPTAQ's perplexity on
    # the selection texts (Qwen2.5-Coder-0.5B 29.58 -> 29.46 and 6.219 -> 6.179; SmolLM2-135M's code
    # 11.03 -> 10.82, its Wikipedia windows 21.74 -> 21.90; BENCHMARKS.md, "Scale refit"). For plain
    # GPTQ it stays off: on Qwen2.5-Coder-0.5B's selection texts it raised plain GPTQ's perplexity
    # (30.73 -> 31.21, 6.251 -> 6.256), as on its evaluation texts (+3.12 -> +3.92 on Wikipedia, while
    # GPTAQ's fell from +2.51 to +1.98); SmolLM2's was mixed. About 0.8 s per Qwen2.5-0.5B decoder layer on CPU.
    # Re-checked over three calibration seeds, paired (BENCHMARKS.md, "Is the refit worth its default?"):
    # with GPTAQ it lowered 10 of 12 selection cells (SmolLM2 -0.7% / -0.7%, Qwen recipe -0.9% / +0.2%).
    refit_scales: bool | None = field(default=None, metadata={"help": "after GPTQ's column loop, refit each row's group scales to the layer's output error with the codes fixed (a least-squares solve per row); null (default): on with GPTAQ (gptaq_alpha > 0), off for plain GPTQ"})

    # The refit's objective (w - Q)(H + lambda I)(w - Q)^T: a larger lambda adds weight-space error
    # and trusts the calibration Hessian less. On selection text lambda = 1 (x mean diagonal) beat the
    # column loop's 0.01 on Qwen2.5-Coder-0.5B (GPTAQ 29.46 / 6.179 -> 29.34 / 6.115; plain GPTQ
    # 31.21 / 6.256 -> 30.27 / 6.229, better than no refit) but lost SmolLM2-135M's code (GPTAQ
    # 10.82 -> 11.30): per model, so the default stays the loop's and the Qwen recipe sets 1.
    refit_damp: float | None = field(default=None, metadata={"help": "dampening of the scale refit's objective, fraction of the mean Hessian diagonal, at least the column loop's (as raised for Cholesky); null: the column loop's; needs the refit on"})

    @property
    def refit(self) -> bool:
        """Whether the scales are refit: ``refit_scales``, or by default only with GPTAQ."""
        return self.gptaq_alpha > 0 if self.refit_scales is None else bool(self.refit_scales)

    def __post_init__(self):
        super().__post_init__()
        check_range("damp", self.damp, 0, 1, lo_open=True)
        if self.gptaq_damp is not None:
            check_range("gptaq_damp", self.gptaq_damp, 0, 10, lo_open=True)
        if self.refit_damp is not None:
            check_range("refit_damp", self.refit_damp, 0, 10, lo_open=True)
            if not self.refit:
                raise ConfigError(
                    f"'refit_damp' ({self.refit_damp:g}) dampens the scale refit, which is off here (it is on by "
                    "default only with GPTAQ, gptaq_alpha > 0): set refit_scales: true, or drop refit_damp", "refit_damp")
        check_range("block_size", self.block_size, 1)
        check_range("gptaq_alpha", self.gptaq_alpha, 0, 1)
        self.check_layerwise_options()
