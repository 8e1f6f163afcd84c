"""The real SmolLM2-135M in bitsandbytes nf4 and int8: evaluate, save, reload in a fresh process."""

import pytest

from llmcompress import EvaluationConfig, Recipe, compress
from llmcompress.methods.bnb import BnbConfig
from llmcompress.modeling import linear_weight_bytes
from llmcompress.verify import check_reload

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("cfg, max_ratio", [
    (dict(load_in_4bit=True, quant_type="nf4", double_quant=True, compute_dtype="bfloat16"), 1.45),
    (dict(load_in_8bit=True), 1.1),
])
def test_bnb_smollm2_roundtrip(smollm2, tmp_path, cfg, max_ratio):
    ev = EvaluationConfig(max_tokens=1024, seq_len=512, latency=False)
    out = tmp_path / "bnb"
    res = compress(smollm2.spec, Recipe(stages=[BnbConfig(**cfg)], name="it-bnb"), out, evaluation=ev, verify=False)
    # measured on these 1022 tokens: bf16 16.3; nf4 ~21 (1.29x); int8 ~16.7 (1.02x)
    assert res.before.perplexity < res.after.perplexity < max_ratio * res.before.perplexity
    assert res.after.memory_footprint_mb < 0.75 * res.before.memory_footprint_mb
    assert check_reload(res.model, out, atol=0) == 0
    assert linear_weight_bytes(res.model) > 0
