"""Structured pruning: fewer parameters for real, a rewritten config, reload = in memory, clear errors."""

import json

import pytest
import torch

from llmcompress import ConfigError, Recipe, compress
from llmcompress.data import CalibrationConfig
from llmcompress.methods.structured import StructuredPruneConfig
from llmcompress.methods.structured.rewrite import prune_kv_groups, prune_mlp_channels
from llmcompress.methods.structured.scores import kv_group_scores, mlp_channel_scores
from llmcompress.modeling import count_parameters
from llmcompress.verify import check_reload, reference_ids

CALIB = CalibrationConfig(num_samples=8, seq_len=64)


def run(tiny_model_dir, tmp_path, **kw):
    recipe = Recipe(stages=[StructuredPruneConfig(**kw)], name="s", calibration=CALIB)
    return compress(str(tiny_model_dir), recipe, tmp_path / "s", evaluation=False)


def test_mlp_heads_and_layers_removed_for_real(tiny_model_dir, tmp_path):
    # tiny Llama: 4 heads, 2 key/value groups, MLP 768, 2 layers
    from transformers import AutoModelForCausalLM

    before = count_parameters(AutoModelForCausalLM.from_pretrained(tiny_model_dir))
    res = run(tiny_model_dir, tmp_path, mlp_ratio=0.25, head_ratio=0.5, drop_layers=1)
    cfg = json.loads((tmp_path / "s" / "config.json").read_text())
    assert (cfg["intermediate_size"], cfg["num_key_value_heads"], cfg["num_attention_heads"], cfg["head_dim"],
            cfg["num_hidden_layers"]) == (576, 1, 2, 64, 1)
    layer = res.model.model.layers[0]
    assert layer.mlp.down_proj.weight.shape == (256, 576) and layer.self_attn.k_proj.weight.shape == (64, 256)
    assert count_parameters(res.model) < 0.75 * before
    assert res.reload_max_abs_diff is not None and res.reload_max_abs_diff < 1e-4
    assert check_reload(res.model, tmp_path / "s", atol=0) == 0
    notes = res.notes["prune_structured"]
    assert len(notes["block_influence"]) == 2 and len(notes["dropped_layers"]) == 1


def test_qwen_biases_follow_the_heads(tiny_qwen_dir, tmp_path):
    res = run(tiny_qwen_dir, tmp_path, head_ratio=0.5, mlp_ratio=0.5)
    attn = res.model.model.layers[1].self_attn
    assert attn.q_proj.bias.shape == (128,) and attn.k_proj.bias.shape == (64,)
    assert res.reload_max_abs_diff < 1e-4


def test_explicit_layers_renumbered(tiny_model_dir, tmp_path):
    res = run(tiny_model_dir, tmp_path, layers=[0])
    assert [l.self_attn.layer_idx for l in res.model.model.layers] == [0]
    ids = reference_ids(512)[:, :8]
    out = res.model.generate(ids, max_new_tokens=4, do_sample=False)  # the KV cache indexes layers by position
    assert out.shape == (1, 12)


def test_removing_a_structure_equals_zeroing_it():
    """Cutting channel j / a kv group out gives exactly the output of the model with it zeroed."""
    from tests.conftest import make_model

    m = make_model(layers=1)
    x = torch.randn(2, 5, 256)
    mlp, attn = m.model.layers[0].mlp, m.model.layers[0].self_attn
    keep = torch.tensor([i for i in range(768) if i % 3])
    zeroed = mlp.down_proj.weight.clone()
    zeroed[:, [i for i in range(768) if i % 3 == 0]] = 0
    with torch.no_grad():
        ref = torch.nn.functional.linear(mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x), zeroed)
        prune_mlp_channels(mlp, keep)
        torch.testing.assert_close(mlp(x), ref)
    w = torch.ones(256, 256)
    act = torch.zeros(256)
    act[128:] = 1.0  # only the second kv group's heads (query heads 2, 3) are active
    assert torch.argmax(kv_group_scores(act, w, 4, 2)) == 1
    assert mlp_channel_scores(torch.tensor([4.0, 1.0]), torch.tensor([[1.0, 3.0]])).tolist() == [2.0, 3.0]
    with torch.no_grad():
        prune_kv_groups(attn, torch.tensor([1]), 4, 2, 64)
    assert attn.q_proj.weight.shape == (128, 256) and attn.o_proj.weight.shape == (256, 128)


@pytest.mark.parametrize("kw, match", [
    (dict(mlp_ratio=1.0), "mlp_ratio"),
    (dict(head_ratio=0.25), "whole key/value groups"),   # 0.25 x 2 groups = half a group
    (dict(head_ratio=0.99), "whole key/value groups"),
    (dict(drop_layers=2), "leave none"),
    (dict(layers=[5]), "do not exist"),
    (dict(), "removes nothing"),
])
def test_bad_ratios_fail_before_loading(tiny_model_dir, tmp_path, kw, match):
    with pytest.raises(ConfigError, match=match):
        run(tiny_model_dir, tmp_path, **kw)
    assert not (tmp_path / "s").exists()
