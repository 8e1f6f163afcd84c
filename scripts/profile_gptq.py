"""Where GPTQ's CPU time goes: cProfile of one ``compress()`` on the model's own calibration,
then the Hessian's Gram product timed alone in each precision it could use.

Usage: python scripts/profile_gptq.py [--model qwen2.5-coder-0.5b] [--samples 64] [--gptaq 0]
       python scripts/profile_gptq.py --refit-only   (the scale refit timed alone on Qwen2.5-0.5B's shapes)
       python scripts/profile_gptq.py --calls        (one gptq_quantize call timed per Qwen2.5-0.5B shape)

Prints, does not write BENCHMARKS.md: the numbers go into the GPTQ summary by hand, beside the
table (`bench:gptq*`) whose time ratio they explain.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

import torch

from _bench import machine
from llmcompress import Recipe, compress
from llmcompress.data import CalibrationConfig
from llmcompress.methods.gptq import GPTQConfig
from llmcompress.methods.gptq.gptq import gptq_quantize
from llmcompress.methods.gptq.hessian import _add_gram, _bf16_cpu_matmul
from llmcompress.methods.gptq.refit import refit_scales
from llmcompress.methods.quant.grid import QuantArgs


def timed(fn, repeats: int = 3) -> float:
    fn()  # warm-up: first-call allocation and kernel selection
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def gram_timings(cols: int = 4864, tokens: int = 8192) -> None:
    """The Gram product of bf16 activations ``[cols, tokens]`` (Qwen2.5-0.5B's down_proj width)."""
    xt = torch.randn(cols, tokens).bfloat16()
    xf = xt.float()
    H = torch.zeros(cols, cols)
    rows = [("float32, MKL", lambda: torch.mm(xf, xf.t()))]
    with _bf16_cpu_matmul():  # the path _accumulate takes for bf16 activations on CPU
        rows += [("float32 on bf16 kernels", lambda: torch.mm(xf, xf.t())),
                 ("float32 on bf16 kernels, symmetric blocks (_add_gram)", lambda: _add_gram(H, xf, 1.0))]
        times = [(name, timed(fn)) for name, fn in rows]
    times.append(("bf16 output (rounds every entry)", timed(lambda: torch.mm(xt, xt.t()))))
    for name, seconds in times:
        print(f"  {name}: {seconds:.3f} s")


def refit_timings(g: int = 128) -> None:
    """``refit_scales`` on random inputs of Qwen2.5-0.5B's shapes (rows x columns): down_proj, gate/up
    stacked, q/k/v stacked."""
    for rows, cols in ((896, 4864), (9728, 896), (1152, 896)):
        x = torch.randn(4096, cols)
        H = x.t() @ x / len(x) + 0.01 * torch.eye(cols)
        W = torch.randn(rows, cols) * 0.02
        scale = (W.abs().view(rows, -1, g).amax(-1) / 7).bfloat16().float()
        s = scale.repeat_interleave(g, dim=1)
        Q = (W / s).round().clamp(-8, 7) * s
        print(f"  refit_scales {rows} x {cols}: {timed(lambda: refit_scales(W, H, Q, scale, g, torch.bfloat16)):.3f} s")


def call_timings(repeats: int = 3) -> None:
    """One ``gptq_quantize`` call per Qwen2.5-0.5B weight shape (rows x columns: down_proj, gate/up
    stacked, q/k/v stacked) on random weights and the Hessian of 8192 random tokens with uneven
    column scales, best of ``repeats`` by wall clock: plain GPTQ and the Qwen recipe's GPTAQ (alpha 0.5,
    target dampening 0.1, the refit at dampening 1), act-order, MSE clipping, group 128, bf16 output."""
    args = QuantArgs(bits=4, group_size=128, sym=True)
    plain = dict(act_order=True, observer="mse", damp=0.01, dtype=torch.bfloat16)
    gptaq = dict(plain, alpha=0.5, target_damp=0.1, refit=True, refit_damp=1.0)
    for rows, cols in ((896, 4864), (9728, 896), (1152, 896)):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(8192, cols, generator=g) * torch.rand(cols, generator=g) * 2
        H = 2 * x.t() @ x / len(x)
        W = torch.randn(rows, cols, generator=g) * 0.02
        WD = torch.randn(rows, cols, generator=g) * 1e-4
        for name, kw in (("plain GPTQ", plain), ("GPTAQ + refit", dict(gptaq, WD=WD))):
            best = min(timed(lambda: gptq_quantize(W, H, args, **kw), 1) for _ in range(repeats))
            print(f"  gptq_quantize {rows} x {cols}, {name}: {best:.3f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--group", type=int, default=128)
    ap.add_argument("--calibration", default="wiki_calib+python_code")
    ap.add_argument("--gptaq", type=float, default=0.0, help="gptaq_alpha (0: plain GPTQ)")
    ap.add_argument("--top", type=int, default=25, help="profile rows to print")
    ap.add_argument("--refit-only", action="store_true", help="time the scale refit alone and stop")
    ap.add_argument("--calls", action="store_true", help="time one gptq_quantize call per Qwen2.5-0.5B shape and stop")
    args = ap.parse_args()
    print(machine())
    if args.refit_only:
        print("Scale refit (mean of 3):")
        refit_timings()
        return
    if args.calls:
        print("gptq_quantize per call (best of 3):")
        call_timings()
        return
    recipe = Recipe(stages=[GPTQConfig(bits=4, group_size=args.group, act_order=True, damp=0.01, observer="mse",
                                       gptaq_alpha=args.gptaq)], name="profile")
    calibration = CalibrationConfig(source=args.calibration, num_samples=args.samples, seq_len=512, seed=0)
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    compress(args.model, recipe, None, calibration=calibration, evaluation=False, verify=False)
    profiler.disable()
    print(f"compress() under cProfile: {time.perf_counter() - start:.1f} s")
    pstats.Stats(profiler).sort_stats("tottime").print_stats(args.top)
    print("Gram product of a 4864 x 8192 bf16 input (mean of 3):")
    gram_timings()


if __name__ == "__main__":
    main()
