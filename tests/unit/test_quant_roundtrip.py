"""Quantized tiny models save and reload with plain from_pretrained, logits equal."""

import json

import pytest
import torch

from llmcompress import ConfigError, Recipe, compress
from llmcompress.methods.quant.record import quantized_modules
from llmcompress.methods.rtn import RTNConfig, apply_rtn
from llmcompress.verify import check_reload


@pytest.mark.parametrize("cfg", [
    dict(bits=4, group_size=64),
    dict(bits=4, group_size=128, observer="mse"),
    dict(bits=8, group_size=-1),
    dict(bits=4, group_size=64, overrides={"down_proj": {"bits": 8}}),
])
def test_rtn_save_reload_fresh_process(tiny_model_dir, tmp_path, cfg):
    recipe = Recipe(stages=[RTNConfig(**cfg)], name="t")
    out = tmp_path / "out"
    res = compress(str(tiny_model_dir), recipe, out, evaluation=False, verify=False)
    model = res.model
    assert len(quantized_modules(model)) == 14  # 7 Linear layers x 2 decoder layers, lm_head ignored
    assert check_reload(model, out, atol=0) == 0
    qcfg = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qcfg["format"] == "pack-quantized" and qcfg["ignore"] == ["lm_head"]
    if "overrides" in cfg:
        assert len(qcfg["config_groups"]) == 2
    # the recipe, card and report travel with the weights
    assert Recipe.from_yaml(out / "llmcompress_recipe.yaml").stages[0] == recipe.stages[0]
    card = (out / "README.md").read_text()
    assert "- rtn" in card and "pip install transformers compressed-tensors" in card


def test_asymmetric_pack_quantized_still_does_not_load(tiny_model_dir, tmp_path, monkeypatch):
    """The reason `sym: false` is refused for compressed-tensors output (WeightQuantConfig.check_recipe):
    transformers rejects the zero points' shape on load. When this test fails, the installed
    transformers / compressed-tensors load them: lift the refusal for those versions."""
    from llmcompress.methods.quant.config import WeightQuantConfig
    from llmcompress.verify import VerificationError

    monkeypatch.setattr(WeightQuantConfig, "check_recipe", lambda self, recipe: None)
    recipe = Recipe(stages=[RTNConfig(bits=4, group_size=128, sym=False)], name="t")
    with pytest.raises(VerificationError, match="does not load with plain from_pretrained"):
        compress(str(tiny_model_dir), recipe, tmp_path / "q", evaluation=False, verify=True)
    assert not (tmp_path / "q").exists()  # nothing half-written


def test_int4_weights_are_smaller_on_disk(tiny_model_dir, tmp_path):
    from llmcompress.export import directory_size

    recipe = Recipe(stages=[RTNConfig(bits=4, group_size=64)], name="t")
    compress(str(tiny_model_dir), recipe, tmp_path / "q", evaluation=False, verify=False)
    # embedding (tied, 512x256) stays fp32; Linear weights shrink ~7x
    assert directory_size(tmp_path / "q") < 0.45 * directory_size(tiny_model_dir)


def test_untied_qwen_roundtrip(tiny_qwen_dir, tmp_path):
    recipe = Recipe(stages=[RTNConfig(bits=4, group_size=128)], name="t")
    res = compress(str(tiny_qwen_dir), recipe, tmp_path / "q", evaluation=False, verify=True)
    assert res.reload_max_abs_diff == 0


def test_group_size_that_divides_nothing(tiny_model_dir, tmp_path):
    recipe = Recipe(stages=[RTNConfig(bits=4, group_size=100)], name="t")
    with pytest.raises(ConfigError, match="divides none of the layer widths"):
        compress(str(tiny_model_dir), recipe, tmp_path / "q", evaluation=False)
    assert not (tmp_path / "q").exists()


def test_width_not_divisible_skips_or_errors(tiny_model, tmp_path):
    # group 384 divides only the 768-wide input of down_proj; the 256-wide layers are skipped
    skipped = apply_rtn(tiny_model, RTNConfig(bits=4, group_size=384))
    names = quantized_modules(skipped)
    assert names and all(n.endswith("down_proj") for n in names)
    from tests.conftest import make_model

    with pytest.raises(ConfigError, match="not divisible by group_size"):
        apply_rtn(make_model(), RTNConfig(bits=4, group_size=384, strict=True))


def test_weight_changed_after_quantization_is_refused(tiny_model, tmp_path):
    from llmcompress import export

    apply_rtn(tiny_model, RTNConfig(bits=4, group_size=64))
    with torch.no_grad():
        tiny_model.model.layers[0].mlp.up_proj.weight.add_(1e-3)
    with pytest.raises(RuntimeError, match="no longer lie on the quantization grid"):
        export.save(tiny_model, None, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
