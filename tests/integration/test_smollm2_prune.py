"""The real SmolLM2-135M: Wanda 2:4, SparseGPT 50%, structured MLP pruning, then distillation to
recover; each saved output reloads in a fresh process with the in-memory logits."""

import json

import pytest

from llmcompress import CalibrationConfig, EvaluationConfig, Recipe, compress
from llmcompress.methods.distill import DistillConfig
from llmcompress.methods.prune.masks import nm_valid
from llmcompress.methods.sparsegpt import SparseGPTConfig
from llmcompress.methods.structured import StructuredPruneConfig
from llmcompress.methods.wanda import WandaConfig
from llmcompress.modeling import linear_layers

pytestmark = pytest.mark.integration
CALIB = CalibrationConfig(num_samples=16, seq_len=512)
EVAL = EvaluationConfig(max_tokens=1024, seq_len=512, latency=False)


def run(smollm2, tmp_path, stage, name):
    return compress(smollm2.spec, Recipe(stages=[stage], name=name, calibration=CALIB), tmp_path / name,
                    evaluation=EVAL)


def test_wanda_2of4(smollm2, tmp_path):
    res = run(smollm2, tmp_path, WandaConfig(pattern="2:4"), "wanda24")
    assert res.reload_max_abs_diff == 0
    for name, m in linear_layers(res.model).items():
        if name != "lm_head":
            assert nm_valid(m.weight, 2, 4)
    # measured (128 x 512 calibration): 142.8; magnitude 2:4: 1486; dense: 16.9 (2048 tokens)
    assert res.after.perplexity < 400
    assert (tmp_path / "wanda24" / "llmcompress_sparsity.png").exists()


def test_sparsegpt_half(smollm2, tmp_path):
    res = run(smollm2, tmp_path, SparseGPTConfig(sparsity=0.5), "sgpt50")
    assert res.reload_max_abs_diff == 0
    # measured (128 x 512 calibration): 35.7; per-layer magnitude: 295; llm-compressor SparseGPT: 49.8
    assert res.after.perplexity < 80
    assert abs(res.after.zero_fraction - 0.5) < 0.01


def test_structured_then_distill(smollm2, tmp_path):
    res = run(smollm2, tmp_path, StructuredPruneConfig(mlp_ratio=0.25), "mlp75")
    cfg = json.loads((tmp_path / "mlp75" / "config.json").read_text())
    assert cfg["intermediate_size"] == 1152 and res.after.parameters < res.before.parameters - 15_000_000
    assert res.reload_max_abs_diff is not None and res.reload_max_abs_diff < 1e-3
    assert res.after.perplexity < 100  # FACTS: weight-norm scores sent 10% removal to 17,125

    # recover: a few steps of KD from the unpruned model through a top-k cache
    recipe = Recipe(stages=[DistillConfig(teacher=smollm2.spec, teacher_dtype="float32", max_steps=4, batch_size=2,
                                          learning_rate=1e-4, top_k=16, alpha=0.5, cache_dir=str(tmp_path / "cache"))],
                    name="kd", calibration=CalibrationConfig(num_samples=8, seq_len=128))
    kd = compress(str(tmp_path / "mlp75"), recipe, tmp_path / "kd", evaluation=EVAL)
    assert kd.notes["distill"]["steps"] == 4 and kd.reload_max_abs_diff < 1e-3
    assert kd.after.parameters == res.after.parameters
    assert "## Distillation" in (tmp_path / "kd" / "README.md").read_text()
