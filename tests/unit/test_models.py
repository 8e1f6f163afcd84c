import pytest

from llmcompress import ModelLoadError, Recipe, compress
from llmcompress.methods.rtn import RTNConfig
from llmcompress.models import resolve


def test_missing_model_path(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        resolve(str(tmp_path / "nope"))
    with pytest.raises(ModelLoadError, match="does not exist"):
        resolve("./not/here/either")
    with pytest.raises(ModelLoadError, match="GGUF file"):
        resolve(str(tmp_path / "m.gguf"))


def test_directory_without_config(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        resolve(str(tmp_path))


def test_not_an_alias_nor_hub_id():
    with pytest.raises(ModelLoadError, match="built-in alias"):
        resolve("smollm3-135m")


def test_hub_id_resolves_without_network():
    src = resolve("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert src.kind == "hub" and src.hub_id == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_unsupported_architecture_fails_before_weights(tmp_path):
    from transformers import GPT2Config

    GPT2Config(n_layer=1, n_embd=64, n_head=2).save_pretrained(tmp_path)  # no weights at all
    recipe = Recipe(stages=[RTNConfig()], name="t")
    with pytest.raises(ModelLoadError, match="model_type 'gpt2'.*not support"):
        compress(str(tmp_path), recipe, tmp_path / "out", evaluation=False)
    assert not (tmp_path / "out").exists()


def test_local_directory_loads(tiny_model_dir):
    from llmcompress import load_model

    model, tok, src = load_model(str(tiny_model_dir))
    assert src.kind == "dir" and model.config.model_type == "llama" and tok("hello").input_ids
