import pytest
import torch

from llmcompress import ConfigError, Recipe, compress
from llmcompress.methods.gptq import GPTQConfig
from llmcompress.methods.prune import PruneConfig, apply_prune
from llmcompress.modeling import linear_layers
from llmcompress.data import CalibrationConfig
from llmcompress.verify import check_reload


def zeros(model):
    ws = [m.weight for m in linear_layers(model).values()]
    return sum(int((w == 0).sum()) for w in ws), sum(w.numel() for w in ws), ws


@pytest.mark.parametrize("scope", ["layer", "global", "global_normalized"])
def test_exact_sparsity(tiny_model, scope):
    apply_prune(tiny_model, PruneConfig(sparsity=0.5, scope=scope))
    z, total, ws = zeros(tiny_model)
    if scope == "layer":
        for w in ws:
            assert int((w == 0).sum()) == round(0.5 * w.numel())
    else:
        assert z == round(0.5 * total)


def test_global_prunes_by_one_threshold(tiny_model):
    with torch.no_grad():
        tiny_model.model.layers[0].mlp.down_proj.weight.mul_(0.01)  # a small-scale layer
    apply_prune(tiny_model, PruneConfig(sparsity=0.5, scope="global"))
    assert (tiny_model.model.layers[0].mlp.down_proj.weight == 0).float().mean() > 0.99
    from tests.conftest import make_model

    m = make_model()
    with torch.no_grad():
        m.model.layers[0].mlp.down_proj.weight.mul_(0.01)
    apply_prune(m, PruneConfig(sparsity=0.5, scope="global_normalized"))  # scale-free: the layer survives
    assert (m.model.layers[0].mlp.down_proj.weight == 0).float().mean() < 0.9


def test_pruned_then_saved_logits_equal(tiny_model_dir, tmp_path):
    res = compress(str(tiny_model_dir), Recipe(stages=[PruneConfig(sparsity=0.5, scope="global")], name="p"),
                   tmp_path / "p", evaluation=False)
    assert res.reload_max_abs_diff == 0
    from safetensors.torch import load_file

    keys = load_file(tmp_path / "p" / "model.safetensors")
    assert not any(k.endswith(("weight_orig", "weight_mask")) for k in keys)


def test_masks_survive_gptq(tiny_model_dir, tmp_path):
    recipe = Recipe(stages=[PruneConfig(sparsity=0.5), GPTQConfig(group_size=64)], name="pq",
                    calibration=CalibrationConfig(num_samples=8, seq_len=64))
    res = compress(str(tiny_model_dir), recipe, tmp_path / "pq", evaluation=False)
    z, total, ws = zeros(res.model)
    assert z >= round(0.5 * total)  # GPTQ never fills a pruned weight back in
    assert check_reload(res.model, tmp_path / "pq", atol=0) == 0


@pytest.mark.parametrize("bad, match", [(dict(sparsity=1.0), "in \\[0, 1\\)"), (dict(sparsity=-0.1), "in \\[0, 1\\)"),
                                        (dict(scope="rows"), "'scope' must be one of")])
def test_bad_configs(bad, match):
    with pytest.raises(ConfigError, match=match):
        PruneConfig(**bad)
