"""Shared fixtures: tiny random-weight models built from configs (widths divisible by 128)
with a real BPE tokenizer trained on the built-in text, saved as local model directories."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from llmcompress.data import BUILTIN_DIR  # noqa: E402

VOCAB = 512


def make_tokenizer(vocab: int = VOCAB):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    text = (BUILTIN_DIR / "wiki_calib.txt").read_text()[:200_000]
    tok.train_from_iterator([text], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="</s>")


def make_model(model_type: str = "llama", layers: int = 2, seed: int = 0, tie: bool = True):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = AutoConfig.for_model(
        model_type, vocab_size=VOCAB, hidden_size=256, intermediate_size=768, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        tie_word_embeddings=tie, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    return AutoModelForCausalLM.from_config(cfg).eval()


@pytest.fixture(scope="session")
def tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer) -> Path:
    """A 2-layer Llama (hidden 256, MLP 768) with the tiny tokenizer, saved to disk."""
    path = tmp_path_factory.mktemp("tiny-llama")
    make_model().save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_qwen_dir(tmp_path_factory, tokenizer) -> Path:
    path = tmp_path_factory.mktemp("tiny-qwen2")
    make_model("qwen2", tie=False).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture()
def tiny_model():
    return make_model()


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # Converted aliases are shared across tests (conversion is slow), but never with the user's cache
    # unless LLMCOMPRESS_CACHE is set by the caller (CI sets it to reuse the converted SmolLM2).
    if "LLMCOMPRESS_TEST_CACHE" in os.environ:
        monkeypatch.setenv("LLMCOMPRESS_CACHE", os.environ["LLMCOMPRESS_TEST_CACHE"])


@pytest.fixture()
def hub(monkeypatch, tmp_path):
    """A loopback Hub (tests/hub_server.py) with HF_ENDPOINT / HF_TOKEN pointing at it."""
    import huggingface_hub.constants

    from tests.hub_server import Hub

    # The suite runs offline (HF_HUB_OFFLINE above); these tests talk to the loopback Hub only.
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    server = Hub().start()
    monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
    monkeypatch.setenv("HF_TOKEN", server.token)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no stored login, empty cache
    yield server
    server.stop()


def read_tensors(folder: Path) -> dict:
    """Every tensor of a saved output's safetensors files (shards merged)."""
    from safetensors.torch import load_file

    out = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        out.update(load_file(f))
    return out


def _numerics_state() -> dict:
    """Process-wide settings that change what a float32 forward computes. A test that leaves one
    changed makes a later test's in-memory logits differ from a fresh process's reload."""
    mk = torch.backends.mkldnn
    state = {
        "num_threads": torch.get_num_threads(),
        "default_dtype": torch.get_default_dtype(),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "grad_enabled": torch.is_grad_enabled(),
        "mkldnn_enabled": mk.enabled,
        "cuda_matmul_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cuda_bf16_reduction": torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction,
        "cuda_fp16_reduction": torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction,
    }
    for name, obj in (("fp32", torch.backends), ("mkldnn", mk), ("mkldnn_matmul", getattr(mk, "matmul", None)),
                      ("cuda_matmul", torch.backends.cuda.matmul)):
        if obj is not None and hasattr(obj, "fp32_precision"):
            state[f"{name}.fp32_precision"] = obj.fp32_precision
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "ONEDNN_DEFAULT_FPMATH_MODE", "DNNL_DEFAULT_FPMATH_MODE"):
        state[var] = os.environ.get(var)
    return state


@pytest.fixture(autouse=True)
def _no_leaked_numerics():
    """Fail the test that leaks a global numerics setting (threads, matmul precision, default
    dtype, grad mode), instead of a later test whose reload check it breaks."""
    before = _numerics_state()
    yield
    after = _numerics_state()
    changed = {k: (before[k], after.get(k)) for k in before if before[k] != after.get(k)}
    assert not changed, f"the test left global torch settings changed (before, after): {changed}"
