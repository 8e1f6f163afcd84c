"""Push to a Hub: the real huggingface_hub client against the loopback Hub in tests/hub_server.py."""

import hashlib
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from huggingface_hub import ModelCard

from llmcompress import Recipe, compress
from llmcompress.cli import main
from llmcompress.data import EvaluationConfig
from llmcompress.errors import ConfigError
from llmcompress.hub import HubError, push
from llmcompress.methods.rtn import RTNConfig
from llmcompress.verify import check_reload, reference_ids, reload_logits

from ..conftest import read_tensors

EVAL = EvaluationConfig(max_tokens=256, seq_len=64, latency=False)


@pytest.fixture(scope="module")
def quantized(tiny_model_dir, tmp_path_factory):
    """A tiny model, RTN int4, written with its report and model card."""
    base = tmp_path_factory.mktemp("base") / "tiny"
    shutil.copytree(tiny_model_dir, base)
    (base / "README.md").write_text("---\nbase_model: someone/tiny-base\nlicense: mit\n---\n# tiny\n")
    out = tmp_path_factory.mktemp("pushed") / "tiny-int4"
    res = compress(str(base), Recipe(stages=[RTNConfig(bits=4, group_size=64)], name="tiny-int4"),
                   out, evaluation=EVAL, verify=False)
    return out, res


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in folder.rglob("*") if p.is_file()}


def test_round_trip_through_hub(hub, quantized, tmp_path, caplog):
    out, res = quantized
    before = snapshot(out)
    caplog.set_level("DEBUG")
    result = push(out, "llmco/tiny-int4")
    assert result.changed and result.url.endswith("/llmco/tiny-int4")
    assert hub.token not in caplog.text

    # safetensors went through the LFS protocol (batch, PUT, verify) and downloads through the CDN.
    assert any(p.startswith("/lfs-upload/") for _, p in hub.requests)
    assert check_reload(res.model, "llmco/tiny-int4", atol=0, env={"HF_HOME": str(tmp_path / "fresh-cache")}) == 0
    assert any(p.startswith("/lfs/") for _, p in hub.requests), "weights must come from the LFS CDN"

    card_text = hub.repos["llmco/tiny-int4"].head("main").files["README.md"].content.decode()
    card = ModelCard(card_text)
    assert card.data.base_model == "someone/tiny-base" and card.data.base_model_relation == "quantized"
    assert card.data.license == "mit"
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "text-generation"
    assert {"llmcompress", "rtn"} <= set(card.data.tags)
    assert 'from_pretrained("llmco/tiny-int4")' in card_text and "PATH_OR_REPO_ID" not in card_text
    assert "| perplexity |" in card_text and "Perplexity on wiki_eval" in card_text and "pip install transformers compressed-tensors" in card_text
    assert yaml.safe_load(card_text.split("```yaml")[1].split("```")[0])["stages"][0]["method"] == "rtn"

    # Unchanged files: no new commit. The local folder was never touched.
    n = len(hub.commits("llmco/tiny-int4"))
    assert main(["push", str(out), "--repo-id", "llmco/tiny-int4"]) == 0
    assert len(hub.commits("llmco/tiny-int4")) == n
    assert snapshot(out) == before


def test_stale_weights_are_removed(hub, quantized, tmp_path):
    out, _ = quantized
    extra = tmp_path / "with-extra"
    shutil.copytree(out, extra)
    (extra / "old-shard.safetensors").write_bytes(b"stale")
    push(extra, "tester/m")
    assert "old-shard.safetensors" in hub.repos["tester/m"].head("main").files
    push(out, "tester/m")
    files = hub.repos["tester/m"].head("main").files
    assert "old-shard.safetensors" not in files and "model.safetensors" in files and ".gitattributes" in files


def test_private_repo_on_a_branch(hub, quantized, tmp_path):
    out, res = quantized
    result = push(out, "tester/private-int4", private=True, revision="v1", commit_message="first cut")
    repo = hub.repos["tester/private-int4"]
    assert repo.private and result.revision == "v1"
    assert repo.branches["v1"][-1].message == "first cut" and "model.safetensors" not in repo.head("main").files
    ids = reference_ids(res.model.config.vocab_size)
    env = {"HF_HOME": str(tmp_path / "c1")}
    with pytest.raises(Exception, match="does not load"):  # anonymous: the repo is invisible
        reload_logits("tester/private-int4", ids, env={**env, "HF_TOKEN": "", "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1"})


def test_wrong_token_is_401_and_never_echoed(hub, quantized, monkeypatch, capsys):
    out, _ = quantized
    monkeypatch.setenv("HF_TOKEN", "hf_wrong_secret_value")
    with pytest.raises(HubError, match="401") as err:
        push(out, "llmco/x")
    assert "hf_wrong_secret_value" not in str(err.value)
    assert main(["push", str(out), "--repo-id", "llmco/x"]) == 2
    assert "hf_wrong_secret_value" not in capsys.readouterr().err
    assert hub.repos == {}


def test_wrong_token_fails_before_compressing(hub, tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    recipe = Recipe(stages=[RTNConfig(bits=4, group_size=64)], name="t", push_to_hub="llmco/t")
    with pytest.raises(HubError, match="401"):
        compress(str(tiny_model_dir), recipe, tmp_path / "o", evaluation=False)
    assert not (tmp_path / "o").exists()
    assert not any("/preupload/" in p for _, p in hub.requests)


def test_missing_organisation(hub, quantized, tiny_model_dir, tmp_path):
    out, _ = quantized
    with pytest.raises(HubError, match="'no-such-org'"):
        push(out, "no-such-org/x")
    recipe = Recipe(stages=[RTNConfig(bits=4, group_size=64)], name="t")
    with pytest.raises(HubError, match="'no-such-org'"):  # checked before any weights load
        compress(str(tiny_model_dir), recipe, tmp_path / "o", evaluation=False, push_to_hub="no-such-org/x")
    assert not (tmp_path / "o").exists()


def test_dropped_connection_then_retry(hub, quantized, tmp_path):
    out, res = quantized
    before = snapshot(out)
    hub.drop_commits = 1
    with pytest.raises(HubError, match="connection .* failed.*same command again") as err:
        push(out, "llmco/flaky")
    assert str(out) in str(err.value)
    assert snapshot(out) == before, "a failed push must not touch the local folder"
    assert [c.message for c in hub.commits("llmco/flaky")] == ["initial commit"]

    result = push(out, "llmco/flaky")  # LFS objects are already there: only the commit is sent again
    assert result.changed and len(hub.commits("llmco/flaky")) == 2
    assert check_reload(res.model, "llmco/flaky", atol=0, env={"HF_HOME": str(tmp_path / "fresh")}) == 0


def test_run_pushes_with_the_cli(hub, tiny_model_dir, tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\nstages:\n- method: rtn\n  bits: 8\n  group_size: 64\npush_to_hub: llmco/from-recipe\n")
    assert main(["run", str(recipe), "--model", str(tiny_model_dir), "--output", str(tmp_path / "o"),
                 "--no-eval", "--no-verify"]) == 0
    assert "pushed to" in capsys.readouterr().out
    assert "model.safetensors" in hub.repos["llmco/from-recipe"].head("main").files
    # --push-to-hub overrides the recipe
    assert main(["run", str(recipe), "--model", str(tiny_model_dir), "--output", str(tmp_path / "o2"),
                 "--no-eval", "--no-verify", "--push-to-hub", "tester/other", "--private"]) == 0
    assert hub.repos["tester/other"].private


def test_bad_inputs(hub, tmp_path, monkeypatch):
    with pytest.raises(HubError, match="not a directory"):
        push(tmp_path / "missing", "llmco/x")
    (tmp_path / "empty").mkdir()
    with pytest.raises(HubError, match="config.json"):
        push(tmp_path / "empty", "llmco/x")
    with pytest.raises(ConfigError, match="push_to_hub"):
        Recipe.from_dict({"stages": [{"method": "rtn"}], "push_to_hub": "no slash"})
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(HubError, match="HF_TOKEN"):
        compress("x", Recipe(stages=[RTNConfig()], name="t"), tmp_path / "o", push_to_hub="llmco/x")
    with pytest.raises(ConfigError, match="output"):
        compress("x", Recipe(stages=[RTNConfig()], name="t"), None, push_to_hub="llmco/x")
    assert hub.requests == []


def test_card_never_names_a_local_path_as_base_model(tmp_path):
    from llmcompress.card import model_card
    from llmcompress.models import ModelSource

    source = ModelSource(spec=str(tmp_path / "my-model"), kind="dir", path=tmp_path)
    card = ModelCard(model_card(Recipe(stages=[RTNConfig()], name="t"), source, None, "compressed-tensors"))
    assert card.data.base_model is None and "llmcompress" in card.data.tags
    assert "# my-model (t)" in card.text
    alias = ModelSource(spec="smollm2-135m", kind="alias", hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
                        license="apache-2.0")
    card = ModelCard(model_card(Recipe(stages=[RTNConfig()], name="t"), alias, None, "compressed-tensors"))
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct" and card.data.license == "apache-2.0"


def test_hub_id_as_the_model_in_memory_and_low_memory(hub, tiny_model_dir, tmp_path):
    """A hub id as the source, in a fresh process that sees only the (loopback) Hub: downloaded by
    huggingface_hub, compressed in memory and layer by layer (low_memory reads the downloaded
    snapshot's shards). Both outputs hold the same tensors; the card names the hub id."""
    import os
    import subprocess
    import sys

    from huggingface_hub import HfApi
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = tmp_path / "src"
    AutoModelForCausalLM.from_pretrained(tiny_model_dir).save_pretrained(src, max_shard_size="400KB")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(src)
    with pytest.MonkeyPatch.context() as mp:  # the loopback Hub speaks plain LFS, not Xet
        import huggingface_hub.constants

        mp.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)
        api = HfApi(endpoint=hub.endpoint, token=hub.token)
        api.create_repo("llmco/tiny-base")
        api.upload_folder(folder_path=src, repo_id="llmco/tiny-base")
    script = (
        "import sys\n"
        "from llmcompress import Recipe, compress\n"
        "from llmcompress.data import CalibrationConfig\n"
        "from llmcompress.methods.gptq import GPTQConfig\n"
        "from llmcompress.recipe import OutputConfig\n"
        "low = sys.argv[2] == 'low'\n"
        "r = Recipe(stages=[GPTQConfig(bits=4, group_size=64)], name='hub', output=OutputConfig(low_memory=low))\n"
        "res = compress('llmco/tiny-base', r, sys.argv[1], calibration=CalibrationConfig(num_samples=8, seq_len=64),\n"
        "               evaluation=False)\n"
        "assert (res.model is None) == low and (low or res.reload_max_abs_diff == 0)\n"
    )
    env = {**os.environ, "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(tmp_path / "hf-home")}
    env.pop("HF_HUB_OFFLINE", None)
    for mode in ("full", "low"):
        proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / mode), mode], env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert any("/resolve/" in p for _, p in hub.requests), "files must come from the Hub"


    a, b = read_tensors(tmp_path / "full"), read_tensors(tmp_path / "low")
    assert a.keys() == b.keys() and any(k.endswith("weight_packed") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert ModelCard((tmp_path / "full" / "README.md").read_text()).data.base_model == "llmco/tiny-base"
