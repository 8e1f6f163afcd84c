import json

import pytest
import torch
from safetensors.torch import load_file

from llmcompress import ConfigError, Recipe, compress
from llmcompress.data import CalibrationConfig
from llmcompress.methods.gptq import GPTQConfig
from llmcompress.methods.quant.gptq_format import pack_rows, unpack_rows
from llmcompress.methods.rtn import RTNConfig
from llmcompress.recipe import OutputConfig


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_pack_unpack_inverse(bits):
    v = torch.randint(0, 1 << bits, (64, 24))
    packed = pack_rows(v, bits)
    assert packed.dtype == torch.int32 and packed.shape == (64 * bits // 32, 24)
    assert torch.equal(unpack_rows(packed, bits), v)


def test_pack_layout_matches_v1_convention():
    # element k of a 4-bit word sits at bits 4k..4k+3
    v = torch.arange(8).view(8, 1)
    assert pack_rows(v, 4).item() == 0x76543210


def dequant_v1(sd, name, bits, g):
    """Rebuild a weight from GPTQ v1 tensors, written out here as the v1 kernels do it."""
    q = unpack_rows(sd[f"{name}.qweight"], bits).t()  # [out, in]
    z = unpack_rows(sd[f"{name}.qzeros"].t().contiguous(), bits).t() + 1  # [groups, out] -> +1 (v1)
    s = sd[f"{name}.scales"].float()  # [groups, out]
    gi = sd[f"{name}.g_idx"].long()
    return (q - z[gi].t()).float() * s[gi].t()


@pytest.mark.parametrize("sym", [True, False])
def test_gptq_v1_checkpoint_rebuilds_in_memory_weights(tiny_model_dir, tmp_path, sym):
    recipe = Recipe(stages=[GPTQConfig(bits=4, group_size=64, sym=sym)], name="t",
                    calibration=CalibrationConfig(num_samples=8, seq_len=64), output=OutputConfig(format="gptq"))
    res = compress(str(tiny_model_dir), recipe, tmp_path / "g", evaluation=False)  # verify: rebuilt == in memory
    assert res.reload_max_abs_diff == 0
    cfg = json.loads((tmp_path / "g" / "config.json").read_text())["quantization_config"]
    assert cfg["quant_method"] == "gptq" and cfg["bits"] == 4 and cfg["group_size"] == 64 and cfg["sym"] == sym
    assert cfg["desc_act"] is False  # static groups: trivial g_idx
    sd = load_file(tmp_path / "g" / "model.safetensors")
    for name, mod in res.model.named_modules():
        if name.endswith("proj"):
            assert sd[f"{name}.scales"].dtype == torch.float16
            assert torch.equal(sd[f"{name}.g_idx"], (torch.arange(mod.in_features) // 64).int())
            torch.testing.assert_close(dequant_v1(sd, name, 4, 64), mod.weight.float(), rtol=0, atol=0)


def test_gptq_format_refuses_overrides_and_odd_bits(tiny_model_dir, tmp_path):
    recipe = Recipe(stages=[RTNConfig(bits=3, group_size=64)], name="t", output=OutputConfig(format="gptq"))
    with pytest.raises(ConfigError, match="packs only"):
        compress(str(tiny_model_dir), recipe, tmp_path / "g", evaluation=False, verify=False)
    recipe = Recipe(stages=[RTNConfig(bits=4, group_size=64, overrides={"down_proj": {"bits": 8}})], name="t",
                    output=OutputConfig(format="gptq"))
    with pytest.raises(ConfigError, match="one grid"):
        compress(str(tiny_model_dir), recipe, tmp_path / "g", evaluation=False, verify=False)
    assert not (tmp_path / "g").exists()


def test_gptq_format_refuses_scales_it_would_round(tiny_model_dir, tmp_path):
    # Quantized by hand with float32 scales: float16 storage would change the weights, so the
    # writer refuses instead of writing a checkpoint that differs from the in-memory model.
    from llmcompress import export, load_model
    from llmcompress.context import Context
    from llmcompress.registry import get_method

    model, tok, _ = load_model(str(tiny_model_dir), dtype="float32")
    stage = RTNConfig(bits=4, group_size=64, sym=False)
    get_method("rtn").apply(model, stage, Context(tokenizer=tok, device=torch.device("cpu")))
    with pytest.raises(ConfigError, match="float16"):
        export.save(model, tok, tmp_path / "g", options={"format": "gptq"})
    assert not (tmp_path / "g").exists()
    # with the scales rounded as the format stores them, the same model writes
    model, tok, _ = load_model(str(tiny_model_dir), dtype="float32")
    get_method("rtn").apply(model, stage, Context(tokenizer=tok, device=torch.device("cpu"), scale_dtype=torch.float16))
    export.save(model, tok, tmp_path / "g", options={"format": "gptq"})
    assert (tmp_path / "g" / "model.safetensors").exists()
