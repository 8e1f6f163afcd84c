import pytest
import torch

from llmcompress import OutputExistsError, export


def test_refuses_existing_output(tiny_model, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        export.save(tiny_model, None, out)
    assert (out / "keep.txt").read_text() == "user data"


def test_overwrite_replaces_only_when_complete(tiny_model, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("old")

    def boom(tmp):
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        export.save(tiny_model, None, out, overwrite=True, finalize=boom)
    assert (out / "keep.txt").read_text() == "old", "a failed overwrite must keep the old directory"
    export.save(tiny_model, None, out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "config.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"], "no temporary directories left behind"


def test_interrupt_leaves_nothing(tiny_model, tmp_path):
    def interrupt(tmp):
        assert (tmp / "config.json").exists()
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        export.save(tiny_model, None, tmp_path / "out", finalize=interrupt)
    assert list(tmp_path.iterdir()) == []


def test_dense_save_is_plain_safetensors(tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM

    export.save(tiny_model, None, tmp_path / "d", recipe_yaml="stages: []\n")
    assert (tmp_path / "d" / "model.safetensors").exists()
    assert (tmp_path / "d" / export.RECIPE_FILE).exists()
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "d")
    ids = torch.randint(0, 512, (1, 8))
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, tiny_model(ids).logits, rtol=0, atol=0)


def test_plain_state_dict_drops_tied_duplicate(tiny_model):
    sd = export.plain_state_dict(tiny_model)
    assert "model.embed_tokens.weight" in sd and "lm_head.weight" not in sd
