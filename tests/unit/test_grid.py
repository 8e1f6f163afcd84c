import pytest
import torch

from llmcompress.methods.quant.grid import (QuantArgs, dequantize, expand_groups, fake_quantize, group_qparams,
                                            integers, mse_shrink, qparams, quantize)


@pytest.mark.parametrize("bits, sym", [(4, True), (4, False), (8, True), (3, False)])
def test_values_lie_on_grid(bits, sym):
    torch.manual_seed(0)
    args = QuantArgs(bits=bits, group_size=32, sym=sym)
    w = torch.randn(16, 128)
    scale, zero = group_qparams(w, args)
    assert scale.shape == (16, 4)
    dq = fake_quantize(w, scale, zero, args)
    q = integers(dq, scale, zero, args).float()
    assert q.min() >= args.qmin and q.max() <= args.qmax
    s = expand_groups(scale, 32)
    z = expand_groups(zero, 32) if zero is not None else 0
    torch.testing.assert_close(dq, (q - z) * s, rtol=0, atol=0)
    # error of round-to-nearest is at most half a step inside the clipping range
    assert ((dq - w).abs() <= s / 2 + 1e-6).float().mean() > 0.99


def test_symmetric_grid_matches_compressed_tensors():
    from compressed_tensors.quantization import QuantizationArgs
    from compressed_tensors.quantization.utils import calculate_qparams

    torch.manual_seed(0)
    w = torch.randn(8, 64)
    args = QuantArgs(4, 64, True)
    scale, _ = qparams(w, args)
    ct_scale, _ = calculate_qparams(w.amin(1, keepdim=True), w.amax(1, keepdim=True),
                                    QuantizationArgs(num_bits=4, type="int", symmetric=True, strategy="channel"))
    torch.testing.assert_close(scale, ct_scale)


def test_pack_unpack_inverse():
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32, unpack_from_int32

    for bits in (4, 8):
        args = QuantArgs(bits, 64, True)
        q = torch.randint(args.qmin, args.qmax + 1, (32, 256), dtype=torch.int8)
        packed = pack_to_int32(q, bits)
        assert packed.dtype == torch.int32 and packed.shape == (32, 256 * bits // 32)
        assert torch.equal(unpack_from_int32(packed, bits, q.shape), q)


def test_mse_observer_not_worse_than_minmax():
    torch.manual_seed(0)
    w = torch.randn(64, 256) * torch.linspace(0.1, 3, 256)
    w[0, 0] = 40  # an outlier that minmax must cover
    args = QuantArgs(4, 64, True)
    err = {}
    for obs in ("minmax", "mse"):
        s, z = group_qparams(w, args, obs)
        err[obs] = (fake_quantize(w, s, z, args) - w).pow(2).sum()
    assert err["mse"] < err["minmax"]
    shrink = mse_shrink(w.reshape(64, 4, 64), args)
    assert ((shrink <= 1) & (shrink >= 0.8 - 1e-6)).all()


def test_zero_rows_quantize_to_zero():
    args = QuantArgs(4, 32, False)
    w = torch.zeros(4, 64)
    s, z = group_qparams(w, args)
    assert torch.equal(fake_quantize(w, s, z, args), w)


def test_dequantize_in_bf16_matches_weight_dtype():
    torch.manual_seed(0)
    args = QuantArgs(4, 64, True)
    w = torch.randn(8, 128, dtype=torch.bfloat16)
    s, z = group_qparams(w, args)
    s = s.to(torch.bfloat16)
    dq = fake_quantize(w, s, z, args, dtype=torch.bfloat16)
    q = integers(dq, s, z, args)
    assert torch.equal(dequantize(q, expand_groups(s, 64), None), dq)
    assert quantize(w, expand_groups(s.float(), 64), None, args).abs().max() <= 8


@pytest.mark.parametrize("observer", ["minmax", "mse"])
def test_asymmetric_zero_points_fit_gptq_v1(observer):
    """GPTQ v1 stores ``zero - 1`` unsigned, so the lowest zero point (qmin) cannot be written
    (found on Qwen2.5-Coder-0.5B: a down_proj group with all weights >= 0). Such groups keep one
    level below zero and still cover their whole range."""
    torch.manual_seed(0)
    args = QuantArgs(bits=4, group_size=32, sym=False)
    w = torch.randn(8, 128)
    w[0, :32] = w[0, :32].abs()          # all >= 0: would need zero = qmin
    w[1, 32:64] = w[1, 32:64].abs() + 0.5  # all > 0
    w[2, 64:96] = -w[2, 64:96].abs()     # all <= 0: zero = qmax, fine
    scale, zero = group_qparams(w, args, observer)
    assert zero.min() >= args.qmin + 1 and zero.max() <= args.qmax
    assert zero[2, 2] == args.qmax
    dq = fake_quantize(w, scale, zero, args)
    if observer == "minmax":  # no clipping: every group's extremes are within half a step
        err = (dq - w).abs() / expand_groups(scale, 32)
        assert err.max() <= 0.5 + 1e-4
    else:
        assert ((dq - w).norm() / w.norm()) < 0.1


def test_mse_shrink_in_row_chunks_equals_one_pass(monkeypatch):
    """On CPU the clipping search runs over row chunks (cache-sized); rows are independent, so
    the factors are the very same as in one pass over the whole weight."""
    from llmcompress.methods.quant import grid

    torch.manual_seed(0)
    w = torch.randn(37, 5, 64) * torch.rand(37, 5, 1) * 3
    for args in (QuantArgs(4, 64, True), QuantArgs(4, 64, False), QuantArgs(8, 64, True)):
        whole = grid.mse_shrink(w, args)
        monkeypatch.setattr(grid, "MSE_CHUNK", 3 * 5 * 64)  # 3 rows per chunk, a ragged last one
        assert torch.equal(grid.mse_shrink(w, args), whole)
        monkeypatch.setattr(grid, "MSE_CHUNK", 1 << 18)


def _mse_shrink_by_definition(w, args, grid=20, max_shrink=0.2, norm=2.4):
    """Each candidate's error from qparams / quantize / dequantize, as the observer is defined."""
    best_err = torch.full(w.shape[:-1] + (1,), float("inf"))
    best = torch.ones_like(best_err)
    for i in range(grid + 1):
        p = 1 - max_shrink * i / grid
        scale, zero = qparams(w, args, p)
        dq = dequantize(quantize(w, scale, zero, args), scale, zero, torch.float32)
        err = (dq - w).abs().pow(norm).sum(-1, keepdim=True)
        better = err < best_err
        best_err, best = torch.where(better, err, best_err), torch.where(better, torch.full_like(best, p), best)
    return best


@pytest.mark.parametrize("args", [QuantArgs(4, 64, True), QuantArgs(4, 64, False), QuantArgs(8, 64, True)])
def test_mse_shrink_equals_its_definition(args):
    """The search reuses one range and one buffer for all candidates: the very same factors as
    computing every candidate's grid from scratch (zero rows and all-positive groups included)."""
    torch.manual_seed(0)
    w = torch.randn(50, 3, 64) * torch.rand(50, 3, 1) * 3
    w[0] = 0
    w[1] = w[1].abs()
    assert torch.equal(mse_shrink(w, args), _mse_shrink_by_definition(w, args))
