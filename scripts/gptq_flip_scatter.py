"""How much GPTQ's result scatters under tiny input changes, on the CPU alone.

GPTQ's error feedback flips single codes on last-bit differences, so two runs that differ only
in rounding (CPU against CUDA, say) give different codes. This quantizes the tests' tiny Llama
(tests/conftest.py's ``make_model``) once as is and once per seed after a 1e-5 relative
perturbation of its weights, with plain GPTQ and with GPTAQ (alpha 0.5), float32 calibration,
and prints per run how far the quantized logits move from that model's own (L2 norm) and the
summed per-layer GPTQ objective. The spread of each column sets the bounds of
tests/unit/test_gptq.py::test_cuda_path_equals_cpu_path.

Usage: python scripts/gptq_flip_scatter.py [--seeds 5]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from llmcompress import Recipe, compress  # noqa: E402
from llmcompress.data import CalibrationConfig  # noqa: E402
from llmcompress.methods.gptq import GPTQConfig  # noqa: E402
from llmcompress.verify import reference_ids  # noqa: E402
from tests.conftest import make_model, make_tokenizer  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", type=int, default=5, help="perturbed copies besides the unperturbed model")
    args = ap.parse_args()
    ids = reference_ids(512)
    print("| perturbation seed | GPTQ deviation | GPTQ objective | GPTAQ deviation | GPTAQ objective |")
    print("|---|---|---|---|---|")
    for seed in range(args.seeds + 1):
        model = make_model()
        if seed:
            gen = torch.Generator().manual_seed(seed)
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(1 + 1e-5 * torch.randn(p.shape, generator=gen))
        with torch.no_grad():
            ref = model(ids).logits.float()
        row = [str(seed or "none")]
        with tempfile.TemporaryDirectory() as d:
            model.save_pretrained(d)
            make_tokenizer().save_pretrained(d)
            for options in ({}, {"gptaq_alpha": 0.5}):
                recipe = Recipe(stages=[GPTQConfig(bits=4, group_size=64, calibration_dtype="float32", **options)],
                                name="scatter", calibration=CalibrationConfig(num_samples=8, seq_len=64))
                res = compress(d, recipe, evaluation=False)
                with torch.no_grad():
                    dev = (res.model(ids).logits.float() - ref).norm().item()
                loss = sum(v["loss"] for v in res.notes["gptq"]["layers"].values())
                row += [f"{dev:.3f}", f"{loss:.4f}"]
        print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
