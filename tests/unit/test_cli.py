import subprocess
import sys

import pytest

from llmcompress.cli import main


def test_recipes_lists_builtins(capsys):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    assert "quickstart" in out and "RTN" in out


@pytest.mark.parametrize("cmd", [[], ["run"], ["eval"], ["recipes"]])
def test_help_everywhere(cmd):
    proc = subprocess.run([sys.executable, "-m", "llmcompress.cli", *cmd, "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "usage: llmcompress" in proc.stdout


def test_run_writes_and_refuses_overwrite(tiny_model_dir, tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: t\nevaluation: {max_tokens: 256, seq_len: 64, latency: false}\n"
                      "stages:\n  - method: rtn\n    bits: 4\n    group_size: 64\n")
    out = tmp_path / "out"
    assert main(["run", str(recipe), "--model", str(tiny_model_dir), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| perplexity |" in printed and "max |logit diff| = 0" in printed
    for name in ("llmcompress_report.md", "llmcompress_report.json", "llmcompress_report.png", "README.md"):
        assert (out / name).exists(), name
    before = (out / "model.safetensors").stat().st_mtime_ns
    assert main(["run", str(recipe), "--model", str(tiny_model_dir), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "Traceback" not in err
    assert (out / "model.safetensors").stat().st_mtime_ns == before


def test_bad_recipe_is_one_paragraph_error(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("stages:\n  - method: rtn\n    bits: 99\n")
    proc = subprocess.run([sys.executable, "-m", "llmcompress.cli", "run", str(recipe), "--model", "x/y",
                           "--output", str(tmp_path / "o")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "stage 1 (rtn)" in proc.stderr and "'bits' must be in [2, 8]" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()


def test_eval_command(tiny_model_dir, tmp_path, capsys):
    assert main(["eval", str(tiny_model_dir), "--max-tokens", "256", "--seq-len", "64", "--no-latency",
                 "--report", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    assert "| perplexity |" in out and (tmp_path / "rep" / "eval.png").exists()


def test_unreadable_data_file_fails_before_loading(tiny_model_dir, tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"evaluation: {{source: {tmp_path}/missing.txt}}\nstages:\n  - method: rtn\n")
    assert main(["run", str(recipe), "--model", str(tiny_model_dir), "--output", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_relative_output_path(tiny_model_dir, tmp_path, monkeypatch, capsys):
    # the fresh-process reload check runs elsewhere: relative outputs must still resolve
    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: t\nstages:\n  - method: rtn\n    group_size: 64\n")
    assert main(["run", str(recipe), "--model", str(tiny_model_dir), "--output", "outputs/rel", "--no-eval"]) == 0
    assert (tmp_path / "outputs" / "rel" / "config.json").exists()
    assert "max |logit diff| = 0" in capsys.readouterr().out
