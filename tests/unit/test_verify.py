"""The reload check: a wrong file fails every attempt; a mismatch that does not repeat passes."""

from __future__ import annotations

import logging

import pytest
import torch

from llmcompress import verify
from llmcompress.verify import VerificationError, check_reload


def test_reload_check_passes_a_faithful_save(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    assert check_reload(tiny_model, tmp_path) <= 1e-5


def test_reload_check_fails_a_wrong_file(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    with torch.no_grad():
        tiny_model.model.layers[0].mlp.down_proj.weight[0, 0] += 1.0  # in memory only
    with pytest.raises(VerificationError, match="in 3 attempts"):
        check_reload(tiny_model, tmp_path)


def test_reload_check_measures_a_mismatch_again(tiny_model, tmp_path, monkeypatch, caplog):
    tiny_model.save_pretrained(tmp_path)
    real, calls = verify.reload_logits, []

    def flaky(model_dir, ids, env=None):
        calls.append(1)
        got = real(model_dir, ids, env)
        return got + 1.0 if len(calls) == 1 else got  # the first reload is off, the next one is not

    monkeypatch.setattr(verify, "reload_logits", flaky)
    with caplog.at_level(logging.WARNING, logger="llmcompress.verify"):
        assert check_reload(tiny_model, tmp_path) <= 1e-5
    assert len(calls) == 2 and "attempt 2" in caplog.text
