import json

import pytest
import torch

from llmcompress import DataError
from llmcompress.data import (CalibrationConfig, EvaluationConfig, TextSource, calibration_batches,
                              evaluation_windows, load_texts)


def test_builtin_texts_are_disjoint():
    calib = load_texts(TextSource(source="wiki_calib"))
    evals = load_texts(TextSource(source="wiki_eval"))
    assert len(calib) == 77 and len(evals) == 20  # articles
    assert not set(calib) & set(evals)


def test_calibration_is_deterministic(tokenizer):
    cfg = CalibrationConfig(num_samples=4, seq_len=32, seed=3)
    a, b = calibration_batches(tokenizer, cfg), calibration_batches(tokenizer, cfg)
    assert a.shape == (4, 32) and torch.equal(a, b)
    c = calibration_batches(tokenizer, CalibrationConfig(num_samples=4, seq_len=32, seed=4))
    assert not torch.equal(a, c)


def test_evaluation_windows_fixed(tokenizer):
    w = evaluation_windows(tokenizer, EvaluationConfig(max_tokens=300, seq_len=64))
    assert w.shape == (4, 64)


def test_jsonl_and_txt_files(tokenizer, tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text("\n".join(json.dumps({"content": f"document number {i} " * 20}) for i in range(10)))
    assert len(load_texts(TextSource(source=str(p), text_field="content"))) == 10
    with pytest.raises(DataError, match="no 'text' key"):
        load_texts(TextSource(source=str(p)))
    t = tmp_path / "d.txt"
    t.write_text("first paragraph\n\nsecond paragraph\n")
    assert load_texts(TextSource(source=str(t))) == ["first paragraph", "second paragraph"]


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_texts(TextSource(source=str(tmp_path / "nope.txt")))
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(DataError, match="cannot be read"):
        load_texts(TextSource(source=str(bad)))
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(DataError, match="empty"):
        load_texts(TextSource(source=str(empty)))


def test_text_shorter_than_seq_len(tokenizer, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("just a few words")
    with pytest.raises(DataError, match="fewer than seq_len"):
        calibration_batches(tokenizer, CalibrationConfig(source=str(short), seq_len=64))
    with pytest.raises(DataError, match="fewer than one window"):
        evaluation_windows(tokenizer, EvaluationConfig(source=str(short), seq_len=64))


def test_shared_source_never_overlaps(tokenizer, tmp_path):
    p = tmp_path / "shared.txt"
    p.write_text("\n\n".join(f"paragraph {i} " + "word " * 30 for i in range(200)))
    calib = CalibrationConfig(source=str(p), num_samples=64, seq_len=16)
    ev = EvaluationConfig(source=str(p), max_tokens=100000, seq_len=16)
    c = calibration_batches(tokenizer, calib, ev)
    e = evaluation_windows(tokenizer, ev, calib)
    from llmcompress.data import tokenize_source

    ids = tokenize_source(tokenizer, calib)
    cut = int(len(ids) * 0.8)
    # every calibration window lies in the head, every evaluation window in the tail
    head = ids[:cut]
    assert all(any(torch.equal(row, head[s:s + 16]) for s in range(len(head) - 15)) for row in c[:4])
    assert torch.equal(e.flatten(), ids[cut:cut + e.numel()])


def test_python_docs_builtin(tokenizer):
    from llmcompress.data import EvaluationConfig, evaluation_windows

    docs = load_texts(TextSource(source="python_docs"))
    assert len(docs) > 50 and any("assert" in d for d in docs)
    assert evaluation_windows(tokenizer, EvaluationConfig(source="python_docs", max_tokens=512, seq_len=128)).shape == (4, 128)


def test_python_code_builtin(tokenizer):
    """Standard-library source as calibration text: many modules, each cut to its head, real code."""
    docs = load_texts(TextSource(source="python_code"))
    assert len(docs) > 100 and all(len(d) <= 20_000 for d in docs)
    assert sum("def " in d for d in docs) > 100 and any(d.startswith(('"""', "#", "import")) for d in docs)
    ids = calibration_batches(tokenizer, CalibrationConfig(source="python_code", num_samples=4, seq_len=64))
    assert ids.shape == (4, 64)


def test_calibration_blend_splits_windows_between_texts(tokenizer):
    cfg = CalibrationConfig(source="wiki_calib+python_code", num_samples=5, seq_len=32, seed=0)
    blend = calibration_batches(tokenizer, cfg)
    wiki = calibration_batches(tokenizer, CalibrationConfig(source="wiki_calib", num_samples=3, seq_len=32, seed=0))
    code = calibration_batches(tokenizer, CalibrationConfig(source="python_code", num_samples=2, seq_len=32, seed=0))
    assert torch.equal(blend, torch.cat([wiki, code]))


def test_calibration_blend_keeps_evaluation_text_held_out(tokenizer):
    calib = CalibrationConfig(source="wiki_calib+python_docs", num_samples=64, seq_len=16, seed=0)
    evaluation = EvaluationConfig(source="python_docs", max_tokens=10**9, seq_len=16)
    held_out = evaluation_windows(tokenizer, evaluation, calib)
    whole = evaluation_windows(tokenizer, evaluation)
    assert len(held_out) < 0.25 * len(whole)  # only the tail (HOLDOUT) of python_docs
    # The blend's python_docs windows come from the head only, as a single-text calibration's do.
    docs = calibration_batches(tokenizer, calib, evaluation)[32:]
    alone = CalibrationConfig(source="python_docs", num_samples=32, seq_len=16, seed=0)
    assert torch.equal(docs, calibration_batches(tokenizer, alone, evaluation))
    assert not torch.equal(docs, calibration_batches(tokenizer, alone))


@pytest.mark.parametrize("source, message", [
    ("wiki_calib+", "empty or repeated"),
    ("wiki_calib+wiki_calib", "empty or repeated"),
    ("wiki_calib+missing.txt", "does not exist"),
])
def test_bad_calibration_blends_are_refused(tokenizer, source, message):
    with pytest.raises(DataError, match=message):
        calibration_batches(tokenizer, CalibrationConfig(source=source, num_samples=4, seq_len=32))


def test_blends_are_for_calibration_only():
    from llmcompress.data import check_source

    with pytest.raises(DataError, match="only calibration"):
        check_source(EvaluationConfig(source="wiki_eval+python_docs"))
    with pytest.raises(DataError, match="at least one window"):
        check_source(CalibrationConfig(source="wiki_calib+python_code", num_samples=1))
