import copy

import pytest
import torch
from torch import nn

from llmcompress import ConfigError, DataError, Recipe, compress
from llmcompress.data import CalibrationConfig
from llmcompress.methods.gptq import GPTQConfig
from llmcompress.methods.gptq import hessian, linalg, refit
from llmcompress.methods.gptq.gptq import gptq_quantize
from llmcompress.methods.gptq.hessian import accumulate_gptaq, accumulate_hessian, accumulate_hessian_pair
from llmcompress.methods.gptq.linalg import HessianError, add_diagonal, asymmetric_target, inverse_hessian_cholesky
from llmcompress.methods.quant.grid import QuantArgs, fake_quantize, group_qparams
from llmcompress.methods.quant.record import QuantRecord, quantized_modules
from llmcompress.verify import check_reload, reference_ids, reload_logits

from ..conftest import VOCAB, read_tensors


def output_error(W, Q, H):
    """``tr((W - Q) H (W - Q)^T)``: the layer's squared output error on the calibration inputs."""
    E = W - Q
    return ((E @ H) * E).sum()


def layer_problem(rows=128, cols=256, n=2048, seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(cols, cols, generator=g) * 0.1 + torch.eye(cols)
    X = torch.randn(n, cols, generator=g) @ mix
    X[:, :4] *= 25  # outlier channels, as in real LLM activations
    W = torch.randn(rows, cols, generator=g)
    H, _ = accumulate_hessian(None, X, 0)
    return W, X, H


def test_hessian_accumulates_in_batches():
    _, X, _ = layer_problem(n=1000)
    H, n = None, 0
    for chunk in X.split(300):
        H, n = accumulate_hessian(H, chunk, n)
    assert n == 1000
    torch.testing.assert_close(H, 2 * X.T @ X / 1000, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("args", [QuantArgs(4, 64, True), QuantArgs(4, 128, False), QuantArgs(8, -1, True),
                                  QuantArgs(3, 64, True)])
@pytest.mark.parametrize("act_order", [False, True])
def test_output_error_below_rtn_and_on_grid(args, act_order):
    W, X, H = layer_problem()
    res = gptq_quantize(W, H, args, act_order=act_order)
    s, z = group_qparams(W, args)
    rtn = fake_quantize(W, s, z, args)
    err_gptq = ((W - res.weight) @ X.T).norm()
    err_rtn = ((W - rtn) @ X.T).norm()
    assert err_gptq < 0.75 * err_rtn
    n_groups = 1 if args.group_size == -1 else W.shape[1] // args.group_size
    assert res.scale.shape == (W.shape[0], n_groups)
    q = QuantRecord(args, res.scale, res.zero, "gptq").codes(res.weight)  # raises if off the grid
    assert q.min() >= args.qmin and q.max() <= args.qmax


def test_act_order_uses_static_contiguous_groups():
    W, X, H = layer_problem()
    args = QuantArgs(4, 64, True)
    res = gptq_quantize(W, H, args, act_order=True)
    s, _ = group_qparams(W, args)  # static: scales of the original, contiguous column groups
    torch.testing.assert_close(res.scale, s)


def test_zeros_and_dead_columns_stay_zero():
    W, X, H = layer_problem()
    W[W.abs() < 0.5] = 0  # a pruned weight
    H[:, 7] = 0
    H[7, :] = 0  # input channel 7 never fires
    res = gptq_quantize(W, H, QuantArgs(4, 64, True), act_order=True)
    assert (res.weight[W == 0] == 0).all()
    assert (res.weight[:, 7] == 0).all()



@pytest.mark.parametrize("args", [QuantArgs(4, 64, True), QuantArgs(4, 64, False)])
@pytest.mark.parametrize("act_order", [False, True])
def test_refit_scales_keeps_codes_and_lowers_the_objective(args, act_order):
    W, X, H = layer_problem()
    W[W.abs() < 0.3] = 0  # pruned weights must stay zero through the refit
    base = gptq_quantize(W, H, args, act_order=act_order, dtype=torch.bfloat16)
    res = gptq_quantize(W, H, args, act_order=act_order, dtype=torch.bfloat16, refit=True)
    base_codes = QuantRecord(args, base.scale, base.zero, "gptq").codes(base.weight)
    codes = QuantRecord(args, res.scale, res.zero, "gptq").codes(res.weight)  # raises if off the new grid
    assert torch.equal(codes, base_codes)
    assert res.weight.dtype == res.scale.dtype == torch.bfloat16
    assert not torch.equal(res.scale, base.scale)
    assert (res.weight[W == 0] == 0).all()
    Hd = H + 0.01 * torch.diag(H).mean() * torch.eye(H.shape[0])
    def objective(Q):
        return output_error(W, Q.float(), Hd)
    assert objective(res.weight) < 0.995 * objective(base.weight)
    assert res.loss < base.loss



def test_refit_damp_sets_the_refit_objective():
    """``refit_damp`` dampens the refit's objective alone: the codes are the column loop's either
    way, and each refit is the better one under its own dampened Hessian."""
    W, X, H = layer_problem()
    args = QuantArgs(4, 64, True)
    lo = gptq_quantize(W, H, args, act_order=True, refit=True)
    hi = gptq_quantize(W, H, args, act_order=True, refit=True, refit_damp=1.0)
    assert torch.equal(QuantRecord(args, lo.scale, None, "gptq").codes(lo.weight),
                       QuantRecord(args, hi.scale, None, "gptq").codes(hi.weight))
    assert not torch.equal(lo.scale, hi.scale)
    mean = torch.diag(H).mean()
    H_lo, H_hi = H + 0.01 * mean * torch.eye(H.shape[0]), H + mean * torch.eye(H.shape[0])
    assert output_error(W, lo.weight, H_lo) < output_error(W, hi.weight, H_lo)
    assert output_error(W, hi.weight, H_hi) < output_error(W, lo.weight, H_hi)
    with pytest.raises(ValueError, match="refit_damp"):
        GPTQConfig(bits=4, group_size=64, gptaq_alpha=0.5, refit_damp=0)
    with pytest.raises(ValueError, match="refit_scales: true"):  # plain GPTQ: the refit is off by default
        GPTQConfig(bits=4, group_size=64, refit_damp=1.0)
    assert GPTQConfig(bits=4, group_size=64, refit_scales=True, refit_damp=1.0).refit


def test_refit_scales_default_follows_gptaq():
    assert GPTQConfig(bits=4, group_size=64, gptaq_alpha=0.5).refit
    assert not GPTQConfig(bits=4, group_size=64).refit
    assert GPTQConfig(bits=4, group_size=64, refit_scales=True).refit
    assert not GPTQConfig(bits=4, group_size=64, gptaq_alpha=0.5, refit_scales=False).refit

@pytest.mark.parametrize("chunk", [1 << 24, 300])  # all rows at once; 2 rows per block
def test_refit_scales_is_the_per_row_least_squares_optimum(chunk, monkeypatch):
    """Against a direct least-squares solve in float64, row by row; a group left with no nonzero
    code (row 0's first) has no say in the objective and keeps its scale."""
    monkeypatch.setattr(refit, "REFIT_CHUNK", chunk)
    W, X, H = layer_problem(rows=8, cols=128)
    args = QuantArgs(4, 64, True)
    res = gptq_quantize(W, H, args)
    Q, scale = res.weight.float(), res.scale.float()
    C = (Q / scale.repeat_interleave(64, dim=1)).round()
    C[0, :64] = 0  # row 0: group 0 has no codes left
    Q = C * scale.repeat_interleave(64, dim=1)
    Hd = H + 0.01 * torch.diag(H).mean() * torch.eye(128)
    Q1, s1, refitted, ratio = refit.refit_scales(W, Hd, Q, scale, 64, torch.float32)
    torch.testing.assert_close(torch.tensor(ratio), output_error(W, Q1, Hd) / output_error(W, Q, Hd), rtol=1e-5, atol=0)
    assert refitted.all()
    assert s1[0, 0] == scale[0, 0]
    for r in range(1, 8):
        B = torch.zeros(128, 2, dtype=torch.float64)  # dequantized row = B @ s
        B[:64, 0], B[64:, 1] = C[r, :64], C[r, 64:]
        Hr = Hd.double()
        s = torch.linalg.solve(B.T @ Hr @ B, B.T @ Hr @ W[r].double())
        torch.testing.assert_close(s1[r].double(), s, rtol=1e-4, atol=0)
        torch.testing.assert_close(Q1[r].double(), B @ s1[r].double())


def test_cholesky_failure_names_layer():
    H = -torch.eye(64)
    with pytest.raises(HessianError, match="layer 'model.layers.3.mlp.down_proj'"):
        inverse_hessian_cholesky(H, 0.01, "model.layers.3.mlp.down_proj")
    # a singular (rank-deficient) Hessian is rescued by dampening
    x = torch.randn(8, 64)
    U, damp = inverse_hessian_cholesky(x.T @ x, 0.01)
    assert torch.isfinite(U).all()


@pytest.mark.parametrize("leaf", [1024, 16])
def test_inverse_hessian_factor_against_float64(leaf, monkeypatch):
    """The column loop's factor: upper triangular, ``U^T U = (H + lambda I)^-1`` to float32 accuracy, from
    one factorization of the reversed matrix and a blocked triangular inverse (leaf 16: the recursion
    splits 100 columns down to 12-13-wide blocks)."""
    monkeypatch.setattr(linalg, "TRIANGULAR_LEAF", leaf)
    torch.manual_seed(0)
    x = torch.randn(400, 100) * torch.rand(100) * 3
    H = 2 * x.T @ x / 400
    U, damp = inverse_hessian_cholesky(H, 0.01)
    A = H.double() + 0.01 * torch.diag(H.double()).mean() * torch.eye(100, dtype=torch.float64)
    ref = torch.linalg.cholesky(torch.linalg.inv(A), upper=True)
    assert damp == 0.01 and torch.equal(U, torch.triu(U))
    torch.testing.assert_close(U.double(), ref, rtol=0, atol=1e-5 * ref.abs().max().item())
    L = torch.linalg.cholesky(A).float()
    torch.testing.assert_close(linalg.lower_triangular_inverse(L).double() @ L.double(), torch.eye(100, dtype=torch.float64),
                               rtol=0, atol=1e-5)


def test_add_diagonal_is_adding_a_scaled_identity():
    torch.manual_seed(0)
    H = torch.randn(50, 50)
    value = 0.01 * torch.diag(H).mean()
    out = add_diagonal(H, value)
    assert torch.equal(out, H + value * torch.eye(50)) and out.data_ptr() != H.data_ptr()


def test_bf16_weights_with_fp16_scales_stay_on_grid():
    W, X, H = layer_problem()
    res = gptq_quantize(W.bfloat16(), H, QuantArgs(4, 64, True), dtype=torch.bfloat16, scale_dtype=torch.float16)
    assert res.weight.dtype == torch.bfloat16 and res.scale.dtype == torch.float16
    QuantRecord(QuantArgs(4, 64, True), res.scale, None, "gptq").codes(res.weight)


def gptq_recipe(**kw):
    return Recipe(stages=[GPTQConfig(bits=4, group_size=64, **kw)], name="t",
                  calibration=CalibrationConfig(num_samples=8, seq_len=64))


@pytest.mark.parametrize("kw", [dict(), dict(act_order=False, true_sequential=False),
                                dict(calibration_dtype="bfloat16", observer="mse"), dict(gptaq_alpha=0.5),
                                dict(gptaq_alpha=0.5, refit_scales=False), dict(refit_scales=True)])
def test_gptq_model_roundtrip(tiny_model_dir, tmp_path, kw):
    res = compress(str(tiny_model_dir), gptq_recipe(**kw), tmp_path / "q", evaluation=False, verify=False)
    assert len(quantized_modules(res.model)) == 14
    # exact, re-measured if a float32 CPU forward does not repeat itself (a wrong file never matches)
    assert check_reload(res.model, tmp_path / "q", atol=0) == 0
    # q/k/v share one Hessian and are quantized together; so are gate/up
    layers = res.notes["gptq"]["layers"]
    if kw.get("true_sequential", True):
        assert "model.layers.0.self_attn.q_proj+self_attn.k_proj+self_attn.v_proj" in layers
        assert "model.layers.1.mlp.gate_proj+mlp.up_proj" in layers


def test_gptq_beats_rtn_on_model(tiny_model_dir):
    from llmcompress import EvaluationConfig
    from llmcompress.methods.rtn import RTNConfig

    ev = EvaluationConfig(max_tokens=1024, seq_len=128, latency=False)
    calib = CalibrationConfig(num_samples=32, seq_len=128)
    g = compress(str(tiny_model_dir), Recipe(stages=[GPTQConfig(bits=3, group_size=64)], name="g"),
                 calibration=calib, evaluation=ev)
    r = compress(str(tiny_model_dir), Recipe(stages=[RTNConfig(bits=3, group_size=64)], name="r"), evaluation=ev)
    assert abs(g.after.perplexity - g.before.perplexity) < abs(r.after.perplexity - r.before.perplexity)


def test_calibration_text_shorter_than_seq_len(tiny_model_dir, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("too short")
    with pytest.raises(DataError, match="fewer than seq_len"):
        compress(str(tiny_model_dir), gptq_recipe(), tmp_path / "q", calibration=CalibrationConfig(source=str(short)),
                 evaluation=False)
    assert not (tmp_path / "q").exists()


def test_group_size_that_divides_nothing(tiny_model_dir, tmp_path):
    recipe = Recipe(stages=[GPTQConfig(group_size=100)], name="t")
    with pytest.raises(ConfigError, match="divides none"):
        compress(str(tiny_model_dir), recipe, tmp_path / "q", evaluation=False)
    assert not (tmp_path / "q").exists()


def test_nan_weights_refused(tiny_model, tokenizer, tmp_path):
    with torch.no_grad():
        tiny_model.model.layers[1].mlp.up_proj.weight[0, 0] = float("nan")
    with pytest.raises(DataError, match="model.layers.1.mlp.up_proj.*NaN"):
        compress(tiny_model, gptq_recipe(), tmp_path / "q", tokenizer=tokenizer, evaluation=False)
    assert not (tmp_path / "q").exists()


def test_no_calibration_data(tiny_model, tokenizer):
    from llmcompress.context import Context
    from llmcompress.methods.gptq import apply_gptq

    with pytest.raises(DataError, match="needs calibration data"):
        apply_gptq(tiny_model, GPTQConfig(group_size=64), Context(tokenizer=tokenizer))


@pytest.mark.parametrize("kw", [dict(), dict(gptaq_alpha=0.5, batch_size=3)])
@pytest.mark.parametrize("disable", ["replays", "kept_inputs"])
def test_replaying_final_submodules_changes_nothing(tiny_model_dir, monkeypatch, kw, disable):
    """Replayed attention and norms, and attention / MLP outputs from kept Linear inputs, give the
    very bytes that recomputing them gives (also when memory is too short to keep inputs)."""
    from llmcompress import calibration, modeling

    first = compress(str(tiny_model_dir), gptq_recipe(**kw), evaluation=False).model.state_dict()
    if disable == "replays":
        monkeypatch.setattr(modeling, "FINAL_AFTER", {})
        monkeypatch.setattr(modeling, "FINAL_FROM_START", ())
    else:
        monkeypatch.setattr(calibration, "KEEP_FRACTION", 0.0)
    second = compress(str(tiny_model_dir), gptq_recipe(**kw), evaluation=False).model.state_dict()
    for k, v in first.items():
        assert torch.equal(v, second[k]), k


class _Sub(nn.Module):
    """Returns its Linear's output as is (``(out, None)``, like attention) or changed."""

    def __init__(self, as_tuple: bool, scale: float):
        super().__init__()
        self.lin, self.as_tuple, self.scale, self.calls = nn.Linear(16, 16), as_tuple, scale, 0

    def forward(self, x):
        self.calls += 1
        out = self.lin(x) * self.scale if self.scale != 1 else self.lin(x)
        return (out, None) if self.as_tuple else out


class _Layer(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = _Sub(True, 1.0), _Sub(False, 2.0)  # b's output is not its Linear's

    def forward(self, h):
        h = h + self.a(h)[0]
        return (h + self.b(h),)


@pytest.mark.parametrize("reference", [False, True])
def test_replay_through_kept_linear_inputs(reference):
    """Outputs of a frozen submodule computed from its Linear's kept inputs equal a full
    recomputation; a submodule whose output is not that Linear's falls back to recomputing."""
    from llmcompress.calibration import LayerRunner

    torch.manual_seed(0)
    layer, hidden = _Layer(), torch.randn(10, 4, 16)
    ref = (copy.deepcopy(layer), hidden.clone()) if reference else None
    runner = LayerRunner(layer, hidden.clone(), {}, batch_size=3, reference=ref)
    seen = []
    runner.observe({"a.lin": layer.a.lin}, lambda n, x, *r: seen.append(n), keep=("a.lin",))
    runner.observe({"b.lin": layer.b.lin}, lambda n, x, *r: seen.append(n), keep=("b.lin",))
    assert len(seen) == 2 * 4  # 4 batches
    with torch.no_grad():
        layer.a.lin.weight.mul_(0.5)  # "quantized": the kept inputs are still a.lin's final inputs
        layer.b.lin.weight.mul_(0.5)
        expected = layer(hidden)[0]
    layers = [layer, ref[0]] if reference else [layer]
    for m in layers:
        m.a.calls = m.b.calls = 0
    runner.freeze("a", through="a.lin")
    runner.freeze("b", through="b.lin")
    runner.propagate()
    runner.release()
    for m in layers:
        assert m.a.calls == 1  # the first batch checks the shortcut; three more batches skip it
        assert m.b.calls == 4  # the check failed: every batch recomputed
        assert "forward" not in vars(m.a)  # released
    torch.testing.assert_close(runner.hidden, expected, rtol=0, atol=0)
    if reference:
        # the reference copy never changed: its hidden states are the untouched layer's outputs
        with torch.no_grad():
            torch.testing.assert_close(runner.ref_hidden, ref[0](hidden)[0], rtol=0, atol=0)


def cpu_cuda_agreement(tiny_model_dir, **options):
    """Quantize the same model on CPU and on CUDA (float32 calibration).

    GPTQ's error feedback is chaotic at the level of single codes: a 1e-4 relative change
    of H (CPU and GPU round Cholesky and matmuls differently) flips ~6% of the codes while
    the objective stays within 0.02%. How far the quantized logits move from the original
    model's scatters with those flips: on CPU alone, five 1e-5 relative perturbations of
    this model's weights gave logit deviations of 16.4-18.5 (GPTQ) and 15.3-18.9 (GPTAQ,
    alpha 0.5), while the summed per-layer objective stayed within 0.4%
    (scripts/gptq_flip_scatter.py). So the paths are compared on the objective, tightly, and
    on the logit deviation only loosely.

    Returns ``{device: (logit deviation, summed per-layer GPTQ objective)}``.
    """
    from llmcompress import load_model

    ids = reference_ids(512)
    original, _, _ = load_model(str(tiny_model_dir))
    with torch.no_grad():
        ref = original(ids).logits.float()
    out = {}
    for device in ("cpu", "cuda"):
        res = compress(str(tiny_model_dir), gptq_recipe(calibration_dtype="float32", **options), evaluation=False,
                       device=device)
        with torch.no_grad():
            dev = (res.model(ids.to(device)).logits.float().cpu() - ref).norm().item()
        out[device] = (dev, sum(v["loss"] for v in res.notes["gptq"]["layers"].values()))
    return out


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run by scripts/gpu_check.py on a GPU box)")
@pytest.mark.parametrize("options", [{}, {"gptaq_alpha": 0.5}])
def test_cuda_path_equals_cpu_path(tiny_model_dir, options):
    res = cpu_cuda_agreement(tiny_model_dir, **options)
    (dev_cpu, loss_cpu), (dev_cuda, loss_cuda) = res["cpu"], res["cuda"]
    assert abs(loss_cpu - loss_cuda) < 0.02 * loss_cpu, res  # what GPTQ minimises: 5x the scatter seen on CPU
    assert abs(dev_cpu - dev_cuda) < 0.35 * dev_cpu, res  # code flips scatter this by up to 23% on CPU alone


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gptq_function_cuda_equals_cpu():
    W, X, H = layer_problem(rows=512, cols=512)
    args = QuantArgs(4, 128, True)
    cpu = gptq_quantize(W, H, args, act_order=True)
    gpu = gptq_quantize(W.cuda(), H.cuda(), args, act_order=True)
    torch.testing.assert_close(cpu.scale, gpu.scale.cpu())  # static groups: same grid
    err_cpu = ((W - cpu.weight) @ X.T).norm()
    err_gpu = ((W - gpu.weight.cpu()) @ X.T).norm()
    assert abs(err_cpu - err_gpu) < 0.01 * err_cpu


def test_mixed_precision_overrides_roundtrip(tiny_model_dir, tmp_path):
    import json

    recipe = Recipe(stages=[GPTQConfig(bits=4, group_size=64, overrides={"down_proj": {"bits": 8, "group_size": -1}})],
                    name="mixed", calibration=CalibrationConfig(num_samples=8, seq_len=64))
    res = compress(str(tiny_model_dir), recipe, tmp_path / "m", evaluation=False)
    assert res.reload_max_abs_diff == 0
    from llmcompress.methods.quant.record import get_record

    down = res.model.model.layers[0].mlp.down_proj
    assert get_record(down).args.bits == 8 and get_record(down).scale.shape == (256, 1)
    groups = json.loads((tmp_path / "m" / "config.json").read_text())["quantization_config"]["config_groups"]
    assert sorted(g["weights"]["num_bits"] for g in groups.values()) == [4, 8]


# ---------------------------------------------------------------- low_memory (layer streaming)
def _gptq_recipe(gptaq_alpha=0.0, **output):
    from llmcompress.recipe import OutputConfig

    return Recipe(stages=[GPTQConfig(bits=4, group_size=64, gptaq_alpha=gptaq_alpha)], name="lowmem",
                  output=OutputConfig(**output))


@pytest.mark.parametrize("model_dir,fmt,alpha", [("tiny_model_dir", "compressed-tensors", 0.0),
                                                 ("tiny_qwen_dir", "compressed-tensors", 0.0), ("tiny_model_dir", "gptq", 0.0),
                                                 ("tiny_qwen_dir", "compressed-tensors", 0.5)])
def test_low_memory_writes_the_same_bytes_in_shards(model_dir, fmt, alpha, request, tmp_path):
    """Layer-by-layer reading and writing gives the in-memory path's tensors, from a sharded source
    into a sharded output, and the output loads with plain from_pretrained."""
    import json

    from transformers import AutoModelForCausalLM

    src = tmp_path / "sharded-src"
    AutoModelForCausalLM.from_pretrained(request.getfixturevalue(model_dir)).save_pretrained(src, max_shard_size="400KB")
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(request.getfixturevalue(model_dir)).save_pretrained(src)
    assert (src / "model.safetensors.index.json").exists()
    calib = CalibrationConfig(num_samples=8, seq_len=64)
    # both paths write shards through the same ShardWriter; the in-memory one is also reloaded and checked
    compress(str(src), _gptq_recipe(alpha, format=fmt, max_shard_size="200KB", verify=fmt == "compressed-tensors"),
             tmp_path / "full", calibration=calib, evaluation=False)
    res = compress(str(src), _gptq_recipe(alpha, format=fmt, max_shard_size="300KB", low_memory=True), tmp_path / "stream",
                   calibration=calib, evaluation=False)
    assert res.model is None and res.notes["low_memory"]


    full, stream = read_tensors(tmp_path / "full"), read_tensors(tmp_path / "stream")
    assert full.keys() == stream.keys() and any(k.endswith(("weight_packed", "qweight")) for k in full)
    for k in full:
        assert full[k].dtype == stream[k].dtype and torch.equal(full[k], stream[k]), k
    index = json.loads((tmp_path / "stream" / "model.safetensors.index.json").read_text())
    files = sorted(f.name for f in (tmp_path / "stream").glob("*.safetensors"))
    assert len(files) > 2 and sorted(set(index["weight_map"].values())) == files
    for f in files:  # under the limit, unless one tensor alone exceeds it (the 512 x 256 fp32 embedding)
        assert (list(index["weight_map"].values()).count(f) == 1
                or (tmp_path / "stream" / f).stat().st_size < 300_000 + 4096), f  # + the JSON header
    assert (tmp_path / "full" / "model.safetensors.index.json").exists()
    assert json.loads((tmp_path / "full" / "config.json").read_text()) == json.loads(
        (tmp_path / "stream" / "config.json").read_text())
    if fmt == "compressed-tensors":  # GPTQ v1 loads through optimum + gptqmodel (scripts/check_gptq_v1_reload.py)
        ids = reference_ids(VOCAB)
        torch.testing.assert_close(reload_logits(tmp_path / "stream", ids), reload_logits(tmp_path / "full", ids),
                                   rtol=0, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run by scripts/gpu_check.py on a GPU box)")
@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_low_memory_on_cuda_matches_in_memory(alpha, tiny_qwen_dir, tmp_path):
    """Streaming layers through the GPU gives the in-memory GPU path's output: bit-identical where
    the GPU repeats itself, and in any case as close to the original model as the in-memory one."""
    calib = CalibrationConfig(num_samples=8, seq_len=64)
    compress(str(tiny_qwen_dir), _gptq_recipe(alpha), tmp_path / "full", calibration=calib, evaluation=False,
             verify=False, device="cuda")
    res = compress(str(tiny_qwen_dir), _gptq_recipe(alpha, low_memory=True), tmp_path / "stream", calibration=calib,
                   evaluation=False, device="cuda")
    assert res.notes["low_memory"]
    full, stream = read_tensors(tmp_path / "full"), read_tensors(tmp_path / "stream")
    assert full.keys() == stream.keys()
    if all(torch.equal(full[k], stream[k]) for k in full):
        return
    ids = reference_ids(VOCAB)
    original = reload_logits(tiny_qwen_dir, ids)
    dev_full = (reload_logits(tmp_path / "full", ids) - original).norm().item()
    dev_stream = (reload_logits(tmp_path / "stream", ids) - original).norm().item()
    assert abs(dev_full - dev_stream) < 0.05 * dev_full, (dev_full, dev_stream)


@pytest.mark.parametrize("case", ["no-output", "two-stages", "wanda", "in-memory", "gguf"])
def test_low_memory_refuses_what_it_cannot_do(case, tiny_model_dir, tiny_model, tokenizer, tmp_path):
    from llmcompress.methods.wanda import WandaConfig
    from llmcompress.recipe import OutputConfig

    out = tmp_path / "out"
    model, kwargs, recipe = str(tiny_model_dir), {}, _gptq_recipe(low_memory=True)
    if case == "no-output":
        out = None
    elif case == "two-stages":
        recipe = Recipe(stages=[WandaConfig(sparsity=0.5), GPTQConfig(bits=4, group_size=64)],
                        output=OutputConfig(low_memory=True))
    elif case == "wanda":
        recipe = Recipe(stages=[WandaConfig(sparsity=0.5)], output=OutputConfig(low_memory=True))
    elif case == "in-memory":
        model, kwargs = tiny_model, {"tokenizer": tokenizer}
    elif case == "gguf":
        model = str(tmp_path / "m.gguf")
        (tmp_path / "m.gguf").write_bytes(b"GGUF")
    with pytest.raises(ConfigError, match="low_memory"):
        compress(model, recipe, out, evaluation=False, **kwargs)
    assert out is None or not out.exists()


def test_low_memory_nan_in_checkpoint_writes_nothing(tiny_model, tokenizer, tmp_path):
    with torch.no_grad():
        tiny_model.model.layers[1].mlp.up_proj.weight[3, 5] = float("nan")
    src = tmp_path / "src"
    tiny_model.save_pretrained(src)
    tokenizer.save_pretrained(src)
    with pytest.raises(DataError, match=r"layers\.1\.mlp\.up_proj\.weight"):
        compress(str(src), _gptq_recipe(low_memory=True), tmp_path / "out",
                 calibration=CalibrationConfig(num_samples=4, seq_len=64), evaluation=False)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


# GPTAQ: the asymmetric objective ||W X - Q X~|| (X: full-precision inputs, X~: quantized model's).

def asymmetric_problem(seed=1):
    W, X, _ = layer_problem(seed=seed)
    g = torch.Generator().manual_seed(seed + 100)
    Xq = X + 0.3 * torch.randn(X.shape, generator=g) * X.std(0)  # the inputs after earlier layers' errors
    (H, D), n = accumulate_hessian_pair(None, Xq, 0, X)
    return W, X, Xq, H, D


def test_inverse_hessian_with_inverse_matches_its_factor():
    """GPTQ / GPTAQ take the shifted target and the column loop's factor from one factorization."""
    W, X, Xq, H, D = asymmetric_problem()
    U, inv, damp = inverse_hessian_cholesky(H, 0.01, with_inverse=True)
    lam = 0.01 * torch.diag(H).mean()
    torch.testing.assert_close(inv, torch.linalg.inv(H.double() + lam * torch.eye(len(H))).float(), rtol=1e-3, atol=1e-5)
    torch.testing.assert_close(U.T @ U, inv, rtol=1e-3, atol=1e-5)
    assert torch.equal(U, inverse_hessian_cholesky(H, 0.01)[0]) and damp == 0.01
    # the shifted target is W + alpha W D (H + lambda I)^-1, from that inverse or from the ridge solve
    direct = W.double() + 0.7 * W.double() @ D.double() @ torch.linalg.inv(H.double() + lam * torch.eye(len(H)))
    torch.testing.assert_close(W + 0.7 * (W @ D) @ inv, direct.float(), rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(asymmetric_target(W, H, D, 0.7, 0.01), direct.float(), rtol=1e-3, atol=1e-4)


def test_gptaq_statistics_accumulate_in_batches():
    W, X, Xq, H, D = asymmetric_problem()
    state, n = None, 0
    for a, b in zip(Xq.split(500), X.split(500)):
        state, n = accumulate_hessian_pair(state, a, n, b)
    torch.testing.assert_close(state[0], 2 * Xq.T @ Xq / n, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(state[1], 2 * (X - Xq).T @ Xq / n, rtol=1e-4, atol=1e-3)
    # identical inputs: no input error, D is zero and the target is W itself
    (H0, D0), _ = accumulate_hessian_pair(None, X, 0, X)
    assert torch.count_nonzero(D0) == 0
    torch.testing.assert_close(asymmetric_target(W, H0, D0, 1.0, 0.01), W)


@pytest.mark.parametrize("block", [16, 1000])
def test_bf16_statistics_in_blocks_match_the_float64_products(monkeypatch, block):
    """The CPU bf16 path multiplies only the blocks on and right of H's diagonal (mirroring the
    rest) and keeps D as a transposed view; both must still be the plain products, and H must
    not be rounded to bf16 (which made nearly singular Hessians indefinite)."""
    monkeypatch.setattr(hessian, "GRAM_BLOCK", block)  # 16: three block rows of a 50-wide input
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(4, 40, 50, generator=g) * torch.rand(50, generator=g) * 4).bfloat16()
    ref = (x.float() + 0.2 * torch.randn(x.shape, generator=g)).bfloat16()
    state, n = None, 0
    for a, b in zip(x.split(2), ref.split(2)):
        state, n = accumulate_hessian_pair(state, a, n, b)
    H, D = state
    X, R = x.reshape(-1, 50).double(), ref.reshape(-1, 50).double()
    exact = 2 * X.T @ X / n
    assert n == 160 and torch.equal(H, H.T), "H must be exactly symmetric"
    # float32 accuracy (a bf16-rounded product is off by up to 2^-9 of an entry)
    assert (H.double() - exact).abs().max() <= 1e-5 * exact.abs().max()
    # D's product is rounded to bf16 once per batch (2^-9 relative)
    torch.testing.assert_close(D.double(), 2 * (R - X).T @ X / n, rtol=1e-2, atol=1e-2 * D.abs().max().item())
    H1, _ = accumulate_hessian(None, x, 0)
    assert torch.equal(H1, H1.T) and (H1.double() - exact).abs().max() <= 1e-5 * exact.abs().max()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_chunked_transpose_is_the_transpose(dtype):
    x = torch.randn(300, 70).to(dtype)  # 300 rows: two whole chunks of 128 and a partial one
    t = hessian.transposed(x)
    assert t.is_contiguous() and torch.equal(t, x.t())


@pytest.mark.parametrize("act_order", [True, False])
def test_gptq_leaves_its_inputs_alone_and_returns_contiguous_weights(act_order):
    """The column loop works in place on its own transposed copy: the caller's W and H must not
    change, and the weights come back row-major (as a checkpoint stores them)."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(512, 96, generator=g) * torch.rand(96, generator=g)
    W = torch.randn(40, 96, generator=g) * 0.1
    H = 2 * x.T @ x / 512
    W0, H0 = W.clone(), H.clone()
    res = gptq_quantize(W, H, QuantArgs(bits=4, group_size=32), act_order=act_order, block_size=64)
    assert torch.equal(W, W0) and torch.equal(H, H0)
    assert res.weight.is_contiguous() and res.weight.shape == W.shape


def test_bf16_inputs_of_a_nearly_singular_hessian_stay_positive_definite():
    """Inputs close to a low-dimensional subspace (as attention outputs of early layers are):
    the accumulated H plus 1% dampening must factor without raising the dampening."""
    g = torch.Generator().manual_seed(0)
    basis = torch.randn(8, 256, generator=g)  # a bf16-rounded product: smallest eigenvalue -1.13 lambda
    x = (torch.randn(4096, 8, generator=g) @ basis + 1e-3 * torch.randn(4096, 256, generator=g)).bfloat16()
    H, n = None, 0
    for chunk in x.split(1024):
        H, n = accumulate_hessian(H, chunk, n)
    lam = 0.01 * H.diag().mean()
    assert torch.linalg.eigvalsh(H.double())[0] > -1e-3 * lam
    _, damp = inverse_hessian_cholesky(H, 0.01)
    assert damp == 0.01


def test_asymmetric_target_is_the_least_squares_solution():
    W, X, Xq, H, D = asymmetric_problem()
    target = asymmetric_target(W, H, D, 1.0, 1e-9)
    # min_Q ||W X - Q X~||: the normal equations' solution
    lstsq = torch.linalg.lstsq(Xq.double(), (X.double() @ W.double().T)).solution.T.float()
    torch.testing.assert_close(target, lstsq, rtol=1e-3, atol=1e-3)
    half = asymmetric_target(W, H, D, 0.5, 1e-9)
    torch.testing.assert_close(half, (W + target) / 2, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("args", [QuantArgs(4, 64, True), QuantArgs(4, 128, False)])
def test_gptaq_lowers_the_full_precision_output_error(args):
    W, X, Xq, H, D = asymmetric_problem()
    plain = gptq_quantize(W, H, args, act_order=True)
    asym = gptq_quantize(W, H, args, act_order=True, D=D, alpha=1.0)
    err = lambda Q: (X @ W.T - Xq @ Q.T).norm()  # noqa: E731
    # measured 0.84x plain GPTQ's error, and below even the unquantized W's (0.86x): the shifted
    # target also undoes the input error, which no rounding of W itself can
    assert err(asym.weight) < 0.9 * err(plain.weight)
    assert err(asym.weight) < 0.9 * err(W)
    QuantRecord(args, asym.scale, asym.zero, "gptq").codes(asym.weight)  # on its grid
    # pruned zeros and dead columns stay zero under the shifted target too
    W[W.abs() < 0.5] = 0
    res = gptq_quantize(W, H, args, act_order=True, D=D, alpha=1.0)
    assert (res.weight[W == 0] == 0).all()


def test_gptaq_target_dampening_is_its_own_ridge():
    """``target_damp`` regularizes only the shifted target: quantizing that target with plain
    GPTQ at the column loop's dampening gives the same weights."""
    W, X, Xq, H, D = asymmetric_problem()
    args = QuantArgs(4, 64, True)
    for t in (0.3, 1.0):
        target = asymmetric_target(W, H, D, 0.5, t)
        want = gptq_quantize(target, H, args, damp=0.01)
        got = gptq_quantize(W, H, args, damp=0.01, D=D, alpha=0.5, target_damp=t)
        assert torch.equal(got.weight, want.weight) and got.damp == 0.01
    # equal dampenings share the column loop's inverse: the same target up to rounding
    want = gptq_quantize(asymmetric_target(W, H, D, 0.5, 0.01), H, args, damp=0.01)
    shared = gptq_quantize(W, H, args, damp=0.01, D=D, alpha=0.5, target_damp=0.01)
    # The two solves differ in rounding: scales move by ~1e-6, and a weight that lands a grid step
    # apart feeds its error forward along its row. Measured 12 of 32768 weights apart on an AMX
    # Intel CPU, 146 (0.45%) on an AVX2-only AMD CPU (other BLAS kernels); a ridge 10% apart
    # (target_damp 0.011) moves 82% of them.
    far = (shared.weight - want.weight).abs() > 1e-3 * want.scale.max()
    assert far.float().mean() < 0.02
    # a stronger ridge pulls the target towards W (a smaller shift)
    shift = lambda t: (asymmetric_target(W, H, D, 0.5, t) - W).norm()  # noqa: E731
    assert shift(1.0) < shift(0.1) < shift(0.01)
    assert not torch.equal(gptq_quantize(W, H, args, D=D, alpha=0.5, target_damp=1.0).weight,
                           gptq_quantize(W, H, args, D=D, alpha=0.5).weight)
    with pytest.raises(ConfigError, match="gptaq_damp"):
        GPTQConfig(gptaq_alpha=0.5, gptaq_damp=0.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gptaq_projected_statistic_is_w_times_d(dtype):
    """For a module with its own input and rows < cols / 2 (down_proj), GPTAQ keeps ``P = W D``
    instead of ``D``; it must equal the product, and narrower-than-wide modules keep ``D``."""
    g = torch.Generator().manual_seed(5)
    x = (torch.randn(6, 30, 96, generator=g) * torch.rand(96, generator=g) * 3).to(dtype)
    ref = (x.float() + 0.3 * torch.randn(x.shape, generator=g)).to(dtype)
    W = torch.randn(40, 96, generator=g).to(dtype)  # 2 * 40 < 96
    state, n, pair, m = None, 0, None, 0
    for a, b in zip(x.split(2), ref.split(2)):
        state, n = accumulate_gptaq(state, a, n, b, weight=W)
        pair, m = accumulate_hessian_pair(pair, a, m, b)
    H, D, P = state
    assert D is None and n == m == 180 and torch.equal(H, pair[0])
    exact = W.double() @ (2 * (ref - x).reshape(-1, 96).double().T @ x.reshape(-1, 96).double() / n)
    tol = 1e-5 if dtype == torch.float32 else 2e-2  # bf16: W (ref - x) and each batch's product rounded
    assert (P.double() - exact).abs().max() <= tol * exact.abs().max()
    # a module with as many rows as half its columns or more keeps D (cheaper there)
    (H2, D2, P2), _ = accumulate_gptaq(None, x[:2], 0, ref[:2], weight=torch.randn(48, 96).to(dtype))
    assert P2 is None and D2 is not None
    # GPTQ from P equals GPTQ from D (the target only ever uses W D)
    args = QuantArgs(4, 32, True)
    Wf = W.float()
    a = gptq_quantize(Wf, H, args, act_order=True, D=pair[1], alpha=0.5)
    b = gptq_quantize(Wf, H, args, act_order=True, WD=Wf @ pair[1], alpha=0.5)
    torch.testing.assert_close(a.weight, b.weight, rtol=0, atol=1e-6 + 1e-3 * a.scale.max().item())


def test_gptaq_dead_columns_same_target_from_d_and_p():
    """A column whose quantized-model input is always zero ("dead") is zeroed, but the
    full-precision input there is not: the target reproduces ``W ref``, so both statistics take
    ``W`` before dead columns are zeroed, and the other columns make up for the lost one."""
    g = torch.Generator().manual_seed(9)
    x = torch.randn(4, 50, 96, generator=g)
    x[..., 7] = 0  # dead in the model being quantized
    ref = x + 0.3 * torch.randn(x.shape, generator=g)  # alive in the full-precision model
    W = torch.randn(40, 96, generator=g)
    (H, _, P), n = accumulate_gptaq(None, x, 0, ref, weight=W)
    (H2, D), _ = accumulate_hessian_pair(None, x, 0, ref)
    args = QuantArgs(4, 32, True)
    a = gptq_quantize(W, H2, args, act_order=True, D=D, alpha=1.0)
    b = gptq_quantize(W, H, args, act_order=True, WD=P, alpha=1.0)
    assert (a.weight[:, 7] == 0).all() and (b.weight[:, 7] == 0).all()
    torch.testing.assert_close(a.weight, b.weight, rtol=0, atol=1e-6 + 1e-3 * a.scale.max().item())
    # the dead column's contribution to W ref is taken up by the others: a smaller output error
    # than the target built from W with the column already zeroed
    W0 = W.clone()
    W0[:, 7] = 0
    c = gptq_quantize(W0, H2, args, act_order=True, D=D, alpha=1.0)
    X, Xq = ref.reshape(-1, 96), x.reshape(-1, 96)
    err = lambda Q: (X @ W.T - Xq @ Q.T).norm()  # noqa: E731
    assert err(a.weight) < err(c.weight)


def test_gptaq_engine_projects_down_proj_only(tiny_model_dir):
    """In the engine down_proj (256 x 768 in the tiny model) gets ``P``; the rest get ``D``."""
    from llmcompress import load_model
    from llmcompress.methods import layerwise
    model, _, _ = load_model(str(tiny_model_dir))
    ids = reference_ids(model.config.vocab_size)[:, :32].repeat(4, 1)
    kinds = {}

    def update(full, modules, weights, stat, opt):
        H, D, P = stat
        kinds[full[0].split(".")[-1]] = "P" if P is not None else "D"
        if P is not None:
            assert P.shape == weights[0].shape

    todo = {n: None for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "layers" in n}
    layerwise.calibrate_layerwise(model, ids, "cpu", todo, accumulate_gptaq, update, batch_size=2, reference=True)
    assert kinds == {"q_proj": "D", "o_proj": "D", "gate_proj": "D", "down_proj": "P"}


def test_engine_hands_gptaq_the_unmodified_models_inputs(tiny_model_dir):
    """Reference inputs are exactly what an untouched copy of the model feeds each module."""
    import copy

    from llmcompress import load_model
    from llmcompress.methods import layerwise

    model, _, _ = load_model(str(tiny_model_dir))
    untouched = copy.deepcopy(model)
    ids = reference_ids(model.config.vocab_size)[:, :32].repeat(4, 1)
    seen: dict[str, list] = {}

    def accumulate(state, x, count, ref):
        return (state or []) + [(x.clone(), ref.clone())], count + 1

    def update(full, modules, weights, stat, opt):
        seen[full[0]] = stat
        for w in weights:  # a visible change, so that later inputs differ from the reference
            w.mul_(0.5)

    todo = {n: None for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "layers" in n}
    layerwise.calibrate_layerwise(model, ids, "cpu", todo, accumulate, update, calibration_dtype="float32",
                                  batch_size=2, reference=True)
    expect: dict[str, list] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, a, n=n: expect.setdefault(n, []).append(a[0]))
             for n, m in untouched.named_modules() if n in todo]
    with torch.no_grad():
        for i in range(0, 4, 2):
            untouched(ids[i : i + 2])
    for h in hooks:
        h.remove()
    assert len(seen) == 2 * 4  # q/k/v, o, gate/up, down in each of two layers
    for name, pairs in seen.items():
        refs = torch.cat([r for _, r in pairs])
        torch.testing.assert_close(refs, torch.cat(expect[name]), rtol=1e-5, atol=1e-5)
        xs = torch.cat([x for x, _ in pairs])
        if name != "model.layers.0.self_attn.q_proj":  # every later input carries the halved weights
            assert not torch.allclose(xs, refs)


def test_kept_inputs_share_one_memory_budget(monkeypatch):
    """Kept Linear inputs are budgeted together: three inputs that each fit in a quarter of the
    free memory, but not all three together, are not all kept."""
    from llmcompress import calibration

    hidden = torch.zeros(4, 8, 16)  # 4 x 8 tokens, float32: 2048 bytes per 16-wide input
    runner = calibration.LayerRunner(nn.Identity(), hidden, {}, 2)
    mods = {n: nn.Linear(16, 16) for n in ("a", "b", "c")}
    monkeypatch.setattr(calibration, "_free_bytes", lambda device: 4 * 2 * 2048)  # budget: two inputs
    assert runner._affordable(mods, ("a", "b", "c")) == ("a", "b")
    mods["a"] = nn.Linear(64, 16)  # needs the whole budget and more: skipped, the others still fit
    assert runner._affordable(mods, ("a", "b", "c")) == ("b", "c")


@pytest.mark.parametrize("native", [True, False], ids=["native-bf16", "emulated-bf16"])
def test_fast_calibration_dtype_follows_the_device(tiny_model_dir, monkeypatch, native):
    """The default calibration_dtype 'fast' runs the forwards in bf16 where the device computes
    it natively and in float32 where it would emulate it (AVX2-only CPUs); named dtypes are
    taken as given, 'auto' keeps the model's."""
    from llmcompress import calibration, load_model
    from llmcompress.methods import layerwise

    monkeypatch.setattr(calibration, "native_bf16", lambda device: native)
    assert GPTQConfig().calibration_dtype == "fast"
    assert calibration.resolve_calibration_dtype("fast", "cpu") == (torch.bfloat16 if native else torch.float32)
    assert calibration.resolve_calibration_dtype("bfloat16", "cpu") == torch.bfloat16
    assert calibration.resolve_calibration_dtype("auto", "cpu") is None
    model, _, _ = load_model(str(tiny_model_dir))
    ids = reference_ids(model.config.vocab_size)[:, :16].repeat(2, 1)
    seen = set()

    def accumulate(state, x, count):
        seen.add(x.dtype)
        return None, count + 1

    todo = {n: None for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "layers" in n}
    layerwise.calibrate_layerwise(model, ids, "cpu", todo, accumulate, lambda *a: None, batch_size=2)
    assert seen == {torch.bfloat16 if native else torch.float32}
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the master weights keep their dtype
    with pytest.raises(ConfigError, match="calibration_dtype"):
        GPTQConfig(calibration_dtype="int8")
