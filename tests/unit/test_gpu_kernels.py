"""The Triton kernels (GPTQ's column loop, the global-threshold selections) on the CPU through
Triton's interpreter: the same kernel source that runs on CUDA, checked against the torch code
it replaces. Each check runs in a subprocess because ``TRITON_INTERPRET`` is read when the
kernels are defined. Skipped where Triton is not installed (it ships with CUDA builds of torch;
``pip install -e .[dev]`` installs it on Linux x86_64)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton not installed")


def _run(code: str) -> str:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_gptq_triton_block_kernel_equals_torch_loop():
    """Static groups (act-order): bit-identical weights; dynamic groups: identical codes and
    objective (scales may move by an ulp: the kernel's stored-back weights round like numpy,
    the torch loop's addr like a fused multiply-add). Zeros stay zero; several row tiles and a
    partial last block are covered (96 rows, 320 columns, block 128)."""
    out = _run("""
        import os, torch
        from llmcompress.methods.gptq import gptq as G
        from llmcompress.methods.gptq.hessian import accumulate_hessian
        from llmcompress.methods.quant.grid import QuantArgs
        torch.manual_seed(0)
        X = torch.randn(1024, 320)
        X[:, 7] = 0  # a dead input column
        W = torch.randn(96, 320)
        W[W.abs() < 0.05] = 0  # pruned weights
        H, _ = accumulate_hessian(None, X, 0)
        for sym in (True, False):
            for act in (True, False):
                args = QuantArgs(4, 64, sym)
                res = {}
                for mode in ("eager", "triton"):
                    os.environ["LLMCOMPRESS_GPTQ_KERNEL"] = mode
                    assert G.kernel_mode(W.device) == mode
                    res[mode] = G.gptq_quantize(W, H, args, act_order=act, observer="mse")
                a, b = res["eager"], res["triton"]
                codes = lambda r: torch.round(r.weight / r.scale.repeat_interleave(64, 1))
                assert torch.equal(codes(a), codes(b)), (sym, act)
                assert abs(a.loss - b.loss) <= 1e-5 * a.loss, (sym, act, a.loss, b.loss)
                assert torch.allclose(a.scale, b.scale, rtol=1e-6, atol=0)
                if act:
                    assert torch.equal(a.weight, b.weight) and torch.equal(a.scale, b.scale), (sym, act)
                assert (b.weight[W == 0] == 0).all() and (b.weight[:, 7] == 0).all()
        print("ok")
    """)
    assert out.strip().endswith("ok")


def test_threshold_selections_equal_brute_force():
    """count (sampled bracket + counting passes), radix and the CPU bracket return the exact k-th
    score, the count below it and the ties, for bf16 / fp16 / fp32 weights, per-tensor scales,
    ties and zeros, k from 1 to all; a tiny or periodic sample (bracket misses) stays exact."""
    out = _run("""
        import os, torch
        from llmcompress.methods.prune import threshold as T, radix as R
        torch.manual_seed(0)
        base = [torch.randn(96, 64), torch.randn(700) * 3, torch.zeros(40), torch.randn(2100)]
        base[0][:10] = 0.5
        base[0][:, ::4] += 4  # periodic structure: a strided sample over-represents it
        for dtype in (torch.bfloat16, torch.float16, torch.float32):
            ts = [t.to(dtype) for t in base]
            total = sum(t.numel() for t in ts)
            for scales in (None, [1.0, 3.0, 0.7, 1.3]):
                scores = torch.cat([T._scores(t.reshape(-1), s).float() for t, s in zip(ts, scales or [1.0] * 4)])
                for k in (1, 3, total // 3, total // 2, total - 1, total):
                    kth = torch.kthvalue(scores, k).values.item()
                    want = (kth, int((scores < kth).sum()), int((scores == kth).sum()))
                    for method in ("sample", "count", "radix"):
                        os.environ["LLMCOMPRESS_THRESHOLD"] = method
                        assert T.global_kth_magnitude(ts, k, scales=scales) == want, (dtype, scales, k, method)
                    for m in (4, 64):
                        assert R.bracket_kth_magnitude(ts, k, scales, sample=m) == want, (dtype, scales, k, m)
        # the masks built from the Triton threshold prune exactly k, ties by position
        os.environ["LLMCOMPRESS_THRESHOLD"] = "count"
        ts = [t.to(torch.bfloat16) for t in base]
        counts = T.prune_in_place(ts, 0.5)
        assert sum(counts) == round(0.5 * sum(t.numel() for t in ts))
        print("ok")
    """)
    assert out.strip().endswith("ok")


def test_kernel_and_threshold_env_values_are_checked():
    out = _run("""
        import os, torch
        from llmcompress.methods.gptq import gptq as G
        from llmcompress.methods.prune import threshold as T
        os.environ["LLMCOMPRESS_GPTQ_KERNEL"] = "fast"
        try:
            G.kernel_mode(torch.device("cpu"))
        except ValueError as e:
            assert "LLMCOMPRESS_GPTQ_KERNEL" in str(e) and "triton" in str(e)
        else:
            raise AssertionError("no error")
        os.environ.pop("LLMCOMPRESS_GPTQ_KERNEL")
        assert G.kernel_mode(torch.device("cpu")) == "eager"  # auto on CPU
        os.environ["LLMCOMPRESS_THRESHOLD"] = "magic"
        try:
            T.global_kth_magnitude([torch.ones(4)], 2)
        except ValueError as e:
            assert "LLMCOMPRESS_THRESHOLD" in str(e)
        else:
            raise AssertionError("no error")
        print("ok")
    """)
    assert out.strip().endswith("ok")
