"""Distillation: losses against their formulas, chunking, the top-k cache, resume, and bad inputs."""

import tempfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from llmcompress import ConfigError, DataError, Recipe, compress
from llmcompress.context import Context
from llmcompress.data import CalibrationConfig
from llmcompress.methods.distill import DistillConfig, apply_distill
from llmcompress.methods.distill import trainer as trainer_mod
from llmcompress.methods.distill.cache import TopKCache, build_cache
from llmcompress.methods.distill.losses import (cross_entropy, distill_loss, hidden_state_loss, layer_pairs,
                                                token_divergence, token_losses)
from tests.conftest import make_model


def kl(p_logits, q_logits):
    p, lp, lq = F.softmax(p_logits, -1), F.log_softmax(p_logits, -1), F.log_softmax(q_logits, -1)
    return (p * (lp - lq)).sum(-1)


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
def test_divergence_of_a_distribution_with_itself_is_zero(kind):
    x = torch.randn(3, 7, 50)
    assert distill_loss(x, x.clone(), kind=kind).abs().item() < 1e-6


def test_losses_match_their_formulas():
    s, t = torch.randn(20, 30), torch.randn(20, 30) * 2
    T = 2.0
    torch.testing.assert_close(distill_loss(s, t, kind="forward_kl", temperature=T), T**2 * kl(t / T, s / T).mean())
    torch.testing.assert_close(distill_loss(s, t, kind="reverse_kl", temperature=T), T**2 * kl(s / T, t / T).mean())
    b = 0.3
    p, q = F.softmax(t, -1), F.softmax(s, -1)
    m = b * p + (1 - b) * q
    jsd = b * (p * (p / m).log()).sum(-1) + (1 - b) * (q * (q / m).log()).sum(-1)
    torch.testing.assert_close(distill_loss(s, t, kind="jsd", beta=b), jsd.mean())
    torch.testing.assert_close(distill_loss(s, t, kind="jsd", beta=0.0), kl(t, s).mean())
    # temperature: the T^2 factor keeps gradients comparable; at T = 1 it is plain KL
    torch.testing.assert_close(distill_loss(s, t, temperature=1.0), F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1),
                                                                               log_target=True, reduction="batchmean"))


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
def test_chunked_equals_unchunked_values_and_gradients(kind):
    torch.manual_seed(0)
    t = torch.randn(2, 9, 40)
    mask = torch.rand(2, 9) > 0.3
    s1 = torch.randn(2, 9, 40, requires_grad=True)
    s2 = s1.detach().clone().requires_grad_(True)
    a = distill_loss(s1, t, mask, kind=kind, temperature=1.5, chunk_size=0)
    b = distill_loss(s2, t, mask, kind=kind, temperature=1.5, chunk_size=4)
    a.backward()
    b.backward()
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(s1.grad, s2.grad)
    assert (s1.grad[~mask] == 0).all(), "masked tokens must not contribute"
    ce_a = cross_entropy(s1, torch.randint(0, 40, (2, 9)), mask, 0)
    assert torch.isfinite(ce_a)
    # reuse_logits: the gradient is written into the logits' memory (a non-leaf, as a model's
    # output); same value and gradient, no buffer of the logits' size
    leaf = s1.detach().clone().requires_grad_(True)
    logits = leaf * 1.0
    c = token_losses(logits, t_logits=t, mask=mask, kind=kind, temperature=1.5, chunk_size=4, reuse_logits=True)
    c.backward()
    torch.testing.assert_close(c, a)
    torch.testing.assert_close(leaf.grad, s1.grad)


def test_topk_teacher_with_k_equal_vocab_is_the_full_loss():
    s, t = torch.randn(5, 12), torch.randn(5, 12)
    top = torch.topk(t, 12)
    for kind in ("forward_kl", "reverse_kl", "jsd"):
        torch.testing.assert_close(distill_loss(s, top.values, kind=kind, t_indices=top.indices),
                                   distill_loss(s, t, kind=kind))


def test_topk_with_tail_is_the_kl_of_the_coarsened_distributions():
    """k + 1 buckets: the teacher's top-k tokens and the rest; the student coarsened the same way."""
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 20, generator=g) * 2, torch.randn(6, 20, generator=g) * 2
    T = 1.7
    top = torch.topk(t, 5)
    p, q = torch.softmax(t / T, -1), torch.softmax(s / T, -1)
    pt, qt = p.gather(-1, top.indices), q.gather(-1, top.indices)
    P = torch.cat([pt, 1 - pt.sum(-1, keepdim=True)], -1)
    Q = torch.cat([qt, 1 - qt.sum(-1, keepdim=True)], -1)
    tail = torch.log(1 - pt.sum(-1))
    kl = lambda a, b: (a * (a / b).log()).sum(-1)  # noqa: E731
    M = 0.3 * P + 0.7 * Q
    want = {"forward_kl": kl(P, Q), "reverse_kl": kl(Q, P), "jsd": 0.3 * kl(P, M) + 0.7 * kl(Q, M)}
    for kind, ref in want.items():
        got = token_divergence(s, top.values, kind, T, 0.3, top.indices, tail)
        torch.testing.assert_close(got, ref * T**2, rtol=1e-4, atol=1e-6)
        # a student equal to the teacher: zero
        same = token_divergence(t, top.values, kind, T, 0.3, top.indices, tail)
        torch.testing.assert_close(same, torch.zeros(6), rtol=0, atol=1e-5)
    # k = V: the tail is empty and the loss is the full one
    full = torch.topk(t, 20)
    empty = torch.full((6,), float("-inf"))
    for kind in want:
        torch.testing.assert_close(token_divergence(s, full.values, kind, T, 0.3, full.indices, empty),
                                   token_divergence(s, t, kind, T, 0.3), rtol=1e-5, atol=1e-6)
    # chunked with gradients: equal to plain autograd
    s1 = s.clone().requires_grad_(True)
    s2 = s.clone().requires_grad_(True)
    a = token_losses(s1, t_logits=top.values, t_indices=top.indices, t_tail=tail, kind="jsd", chunk_size=0)
    b = token_losses(s2, t_logits=top.values, t_indices=top.indices, t_tail=tail, kind="jsd", chunk_size=2)
    a.backward()
    b.backward()
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(s1.grad, s2.grad)


def test_cache_round_trips_exactly(tmp_path):
    teacher = make_model()
    ids = torch.randint(0, 512, (5, 16))
    build_cache(teacher, ids, tmp_path / "c", k=8, temperature=2.0, shard_samples=2, batch_size=2, teacher_name="t")
    cache = TopKCache(tmp_path / "c")
    assert len(cache) == 5 and cache.k == 8 and cache.temperature == 2.0 and len(cache.index["shards"]) == 3
    with torch.no_grad():
        logits = teacher(ids).logits.float()
    top = torch.topk(logits, 8, dim=-1)
    p = torch.softmax(logits / 2.0, -1)
    for i in range(5):
        x, v, j, tail = cache[i]
        assert torch.equal(x, ids[i])
        assert torch.equal(v, top.values[i].half()) and torch.equal(j, top.indices[i].int())
        torch.testing.assert_close(tail.exp(), 1 - p[i].gather(-1, top.indices[i]).sum(-1), rtol=1e-4, atol=1e-6)
    with pytest.raises(DataError, match="not a teacher logit cache"):
        TopKCache(tmp_path)


def ctx_for(tokenizer, ids):
    return Context(tokenizer=tokenizer, device=torch.device("cpu"), calibration=lambda: ids)


def final_weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("top_k", [0, 16])
def test_resume_gives_the_same_weights(tiny_model_dir, tokenizer, tmp_path, monkeypatch, top_k):
    ids = torch.randint(0, 512, (12, 32), generator=torch.Generator().manual_seed(0))
    common = dict(teacher=str(tiny_model_dir), teacher_dtype="float32", max_steps=4, save_steps=2, batch_size=2,
                  learning_rate=1e-3, top_k=top_k, cache_dir=str(tmp_path / "cache"), logging_steps=1)
    full = apply_distill(make_model(layers=1, seed=1), DistillConfig(**common, checkpoint_dir=str(tmp_path / "a")),
                         ctx_for(tokenizer, ids))

    original = trainer_mod.DistillTrainer.compute_loss

    def interrupted(self, *a, **kw):
        if self.state.global_step == 2:
            raise KeyboardInterrupt  # after the step-2 checkpoint
        return original(self, *a, **kw)

    monkeypatch.setattr(trainer_mod.DistillTrainer, "compute_loss", interrupted)
    with pytest.raises(KeyboardInterrupt):
        apply_distill(make_model(layers=1, seed=1), DistillConfig(**common, checkpoint_dir=str(tmp_path / "b")),
                      ctx_for(tokenizer, ids))
    monkeypatch.setattr(trainer_mod.DistillTrainer, "compute_loss", original)
    ctx = ctx_for(tokenizer, ids)
    resumed = apply_distill(make_model(layers=1, seed=1),
                            DistillConfig(**common, checkpoint_dir=str(tmp_path / "b"), resume=True), ctx)
    assert ctx.notes["distill"]["resumed_from"].endswith("checkpoint-2")
    a, b = final_weights(full), final_weights(resumed)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    assert not torch.equal(a["model.layers.0.mlp.up_proj.weight"],
                           make_model(layers=1, seed=1).state_dict()["model.layers.0.mlp.up_proj.weight"])


def test_student_larger_than_teacher(tiny_model_dir, tokenizer, tmp_path):
    small = tmp_path / "small"
    make_model(layers=1).save_pretrained(small)
    tokenizer.save_pretrained(small)
    with pytest.raises(ConfigError, match="larger than the teacher"):
        apply_distill(make_model(layers=2), DistillConfig(teacher=str(small), teacher_dtype="float32"),
                      ctx_for(tokenizer, torch.randint(0, 512, (4, 16))))


def test_vocabulary_mismatch_is_refused_before_loading(tiny_model_dir, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    other = tmp_path / "other-vocab"
    cfg = AutoConfig.from_pretrained(tiny_model_dir)
    cfg.vocab_size = 1024
    AutoModelForCausalLM.from_config(cfg).save_pretrained(other)
    from tests.conftest import make_tokenizer

    make_tokenizer(1024).save_pretrained(other)
    student = tmp_path / "student"
    make_model(layers=1).save_pretrained(student)
    make_tokenizer().save_pretrained(student)
    recipe = Recipe(stages=[DistillConfig(teacher=str(other))], name="d")
    with pytest.raises(ConfigError, match="vocab|tokenizer") as err:
        compress(str(student), recipe, tmp_path / "out")
    assert "tokenizers differ (512 vs 1024 tokens" in str(err.value)
    assert not (tmp_path / "out").exists()


def test_empty_training_text(tiny_model_dir, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    recipe = Recipe(stages=[DistillConfig(teacher=str(tiny_model_dir))], name="d",
                    calibration=CalibrationConfig(source=str(empty), num_samples=4, seq_len=16))
    with pytest.raises(DataError):
        compress(str(tiny_model_dir), recipe, tmp_path / "out", evaluation=False)
    assert not (tmp_path / "out").exists()


def test_deepspeed_launch_is_refused_before_any_work(tiny_model_dir, tmp_path, monkeypatch):
    """Under DeepSpeed each process would end holding a partition of the student, which is not
    gathered back: refused before the teacher's cache is built."""
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    recipe = Recipe(stages=[DistillConfig(teacher=str(tiny_model_dir), teacher_dtype="float32", max_steps=2,
                                          top_k=8, cache_dir=str(tmp_path / "cache"))],
                    name="d", calibration=CalibrationConfig(num_samples=4, seq_len=16))
    with pytest.raises(ConfigError, match="DeepSpeed") as err:
        compress(str(tiny_model_dir), recipe, tmp_path / "out", evaluation=False)
    assert "--use_fsdp" in str(err.value) and err.value.key == "launcher"
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("case", ["trains nothing", "stage after training", "lora", "qlora"])
def test_fsdp_launch_refuses_what_it_cannot_shard(tiny_model_dir, tmp_path, monkeypatch, case):
    """FSDP shards training only, and not peft adapters here: a recipe without a training stage, a
    stage after the training one (only the main process holds the gathered student) and a LoRA /
    QLoRA student are refused before any work (in every process: each runs this check)."""
    from llmcompress.methods.rtn import RTNConfig

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    distill = DistillConfig(teacher=str(tiny_model_dir), max_steps=2, lora_r=4 * (case in ("lora", "qlora")),
                            qlora=case == "qlora")
    stages, match, key = {"trains nothing": ([RTNConfig(bits=8)], "trains nothing", "launcher"),
                          "stage after training": ([distill, RTNConfig(bits=8)], "'rtn' follows it", "launcher"),
                          "lora": ([distill], "LoRA / QLoRA", "lora_r"),
                          "qlora": ([distill], "LoRA / QLoRA", "lora_r")}[case]
    recipe = Recipe(stages=stages, name="d", calibration=CalibrationConfig(num_samples=4, seq_len=16))
    with pytest.raises(ConfigError, match=match) as err:
        compress(str(tiny_model_dir), recipe, tmp_path / "out", evaluation=False)
    assert err.value.key == key
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_distilled_student_saves_and_reloads(tiny_model_dir, tokenizer, tmp_path):
    student = tmp_path / "student"
    make_model(layers=1, seed=3).save_pretrained(student)
    tokenizer.save_pretrained(student)
    recipe = Recipe(stages=[DistillConfig(teacher=str(tiny_model_dir), teacher_dtype="float32", max_steps=3,
                                          top_k=8, cache_dir=str(tmp_path / "cache"), loss="jsd", alpha=0.5,
                                          teacher_correction_steps=2)],
                    name="d", calibration=CalibrationConfig(num_samples=8, seq_len=32))
    res = compress(str(student), recipe, tmp_path / "out", evaluation=False)
    assert res.reload_max_abs_diff is not None and res.reload_max_abs_diff < 1e-4
    notes = res.notes["distill"]
    assert notes["steps"] == 3 and notes["tokens"] == 3 * 4 * 32 and notes["top_k"] == 8
    assert notes["teacher_dtype"] == "float32"
    card = (tmp_path / "out" / "README.md").read_text()
    assert "## Distillation" in card and str(tiny_model_dir) in card and "steps" in card
    assert "teacher in float32" in card
    assert "| teacher correction | 2 steps of cross-entropy on the training data" in card
    assert notes["teacher_correction"]["steps"] == 2


@pytest.mark.parametrize("native", [True, False], ids=["native-bf16", "emulated-bf16"])
def test_fast_teacher_dtype_follows_the_device(tiny_model_dir, monkeypatch, native):
    """The default teacher_dtype 'fast' loads the teacher in bf16 where the device computes it
    natively and in float32 where it would emulate it (AVX2-only CPUs); the top-k cache is keyed
    on the dtype the teacher ran in, so a cache of one is never read as the other's."""
    from llmcompress import calibration
    from llmcompress.methods import distill
    from llmcompress.methods.distill.cache import cache_key

    monkeypatch.setattr(calibration, "native_bf16", lambda device: native)
    cfg = DistillConfig(teacher=str(tiny_model_dir))
    assert cfg.teacher_dtype == "fast"
    teacher, _, _, dtype = distill._load_teacher(cfg, torch.device("cpu"))
    assert dtype == ("bfloat16" if native else "float32")
    assert {p.dtype for p in teacher.parameters()} == {torch.bfloat16 if native else torch.float32}
    pinned = distill._load_teacher(DistillConfig(teacher=str(tiny_model_dir), teacher_dtype="float16"), torch.device("cpu"))
    assert pinned[3] == "float16" and next(pinned[0].parameters()).dtype == torch.float16
    ids = torch.zeros(2, 8, dtype=torch.long)
    assert cache_key("t", ids, 8, 1.0, "bfloat16") != cache_key("t", ids, 8, 1.0, "float32")
    with pytest.raises(ConfigError, match="teacher_dtype"):
        DistillConfig(teacher=str(tiny_model_dir), teacher_dtype="int4")


def test_cache_of_another_temperature_is_refused(tiny_model_dir, tokenizer, tmp_path):
    """A cache_dir holding a top-k cache built at another temperature (its tail masses differ) is not
    silently reused."""
    ids = torch.randint(0, 512, (4, 16), generator=torch.Generator().manual_seed(0))
    from transformers import AutoModelForCausalLM

    teacher = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    build_cache(teacher, ids, tmp_path / "cache", k=8, temperature=1.0)
    cfg = DistillConfig(teacher=str(tiny_model_dir), teacher_dtype="float32", max_steps=1, batch_size=2, top_k=8,
                        temperature=2.0, cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ConfigError, match="temperature 1.0.*asks for top-8 at 2.0"):
        apply_distill(make_model(layers=1, seed=2), cfg, ctx_for(tokenizer, ids))


def test_teacher_in_4bit(tiny_model_dir, tokenizer):
    pytest.importorskip("bitsandbytes")
    ids = torch.randint(0, 512, (4, 16), generator=torch.Generator().manual_seed(0))
    ctx = ctx_for(tokenizer, ids)
    student = apply_distill(make_model(layers=1, seed=2), DistillConfig(teacher=str(tiny_model_dir), teacher_dtype="nf4",
                                                                        max_steps=2, batch_size=2), ctx)
    assert ctx.notes["distill"]["steps"] == 2 and torch.isfinite(torch.tensor(ctx.notes["distill"]["train_loss"]))
    assert not student.training


def test_qlora_student(tiny_model_dir, tokenizer, tmp_path):
    """QLoRA: only LoRA adapters train, on a frozen nf4 copy; the output holds dequant(nf4(W)) + BA
    for the adapted Linears and the student's own other weights; it saves and reloads equal."""
    pytest.importorskip("bitsandbytes")
    import bitsandbytes.functional as bnbf

    from llmcompress.methods.distill import qlora as Q

    student_dir = tmp_path / "student"
    original = make_model(layers=1, seed=4)
    original.save_pretrained(student_dir)
    tokenizer.save_pretrained(student_dir)
    before = {k: v.clone() for k, v in original.state_dict().items()}

    seen = {}
    real = Q.qlora_student

    def spy(model, *a, **kw):
        peft_model = real(model, *a, **kw)
        seen["trainable"] = [n for n, p in peft_model.named_parameters() if p.requires_grad]
        w = peft_model.get_submodule("base_model.model.model.layers.0.mlp.down_proj.base_layer").weight
        seen["base"] = bnbf.dequantize_4bit(w.data, w.quant_state).float().clone()
        seen["peft"] = peft_model
        return peft_model

    Q.qlora_student = spy
    try:
        recipe = Recipe(stages=[DistillConfig(teacher=str(tiny_model_dir), teacher_dtype="float32", max_steps=4,
                                              batch_size=2, learning_rate=5e-3, lora_r=4, qlora=True)],
                        name="q", calibration=CalibrationConfig(num_samples=8, seq_len=32))
        res = compress(str(student_dir), recipe, tmp_path / "out", evaluation=False)
    finally:
        Q.qlora_student = real
    assert seen["trainable"] and all("lora_" in n for n in seen["trainable"])
    assert res.reload_max_abs_diff is not None and res.reload_max_abs_diff < 1e-4
    from transformers import AutoModelForCausalLM

    out = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).state_dict()
    lora = seen["peft"].get_submodule("base_model.model.model.layers.0.mlp.down_proj")
    delta = lora.get_delta_weight("default").float()
    assert delta.abs().max() > 0  # the adapters learned something
    w = out["model.layers.0.mlp.down_proj.weight"]
    assert torch.allclose(w, seen["base"] + delta, atol=1e-6)
    assert not torch.equal(w, before["model.layers.0.mlp.down_proj.weight"])
    for k in ("model.embed_tokens.weight", "model.norm.weight", "model.layers.0.input_layernorm.weight"):
        assert torch.equal(out[k], before[k])  # frozen in the 4-bit copy: the student's own values


def test_qlora_needs_lora_rank():
    with pytest.raises(ConfigError, match="lora_r"):
        DistillConfig(teacher="x", qlora=True)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:  # a fixed port may still be held by an earlier run
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch(tmp_path: Path, name: str, tiny_model_dir, student, env: dict | None = None, stages: str = "",
            distill: str = "    max_steps: 3\n"):
    """Run the CLI under torchrun with two CPU processes (gloo); returns (process, rank lines)."""
    import os
    import subprocess
    import sys

    recipe = tmp_path / f"{name}.yaml"
    recipe.write_text(f"""name: {name}
stages:
  - method: distill
    teacher: {tiny_model_dir}
    teacher_dtype: float32
    top_k: 8
    cache_dir: {tmp_path / (name + '-cache')}
{distill}    batch_size: 2
    learning_rate: 1.0e-3
{stages}calibration: {{source: wiki_calib, num_samples: 16, seq_len: 32}}
evaluation: {{source: wiki_eval, max_tokens: 256, seq_len: 64}}
""")
    cli = Path(sys.executable).parent / "llmcompress"
    # --tee 3: every line of each rank, prefixed with it, so that a failing rank says why
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--tee", "3",
                           "--master_port", str(_free_port()),
                           str(cli), "run", str(recipe), "--model", str(student), "--output",
                           str(tmp_path / f"{name}-out")], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})
    ranks = "\n".join(ln for ln in (proc.stdout + proc.stderr).replace("\r", "\n").splitlines()
                      if ln.startswith("[default") and "it/s]" not in ln and "sample/s]" not in ln)
    return proc, ranks


def _student_dir(tmp_path: Path, tokenizer) -> Path:
    student = tmp_path / "student"
    make_model(layers=1, seed=3).save_pretrained(student)
    tokenizer.save_pretrained(student)
    return student


# accelerate enables FSDP for GPU launches only; tests/fsdp_cpu lifts that gate for CPU processes
FSDP_ON_CPU = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP",
               "FSDP_TRANSFORMER_CLS_TO_WRAP": "LlamaDecoderLayer",
               "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "fsdp_cpu")}


def test_data_parallel_and_fsdp_runs_under_a_launcher(tiny_model_dir, tokenizer, tmp_path):
    """Two processes under torchrun (what ``accelerate launch --multi_gpu`` starts; gloo on CPU):
    the Trainer shares the batches, the main process builds the logit cache once, and only it
    measures and writes the output. The same run under FSDP (each process holds half of the
    student, gathered back into a plain model on the main process after training) writes the same
    weights as the data-parallel one."""
    import json

    from safetensors.torch import load_file

    student = _student_dir(tmp_path, tokenizer)
    runs = {}
    for name, env in (("ddp", None), ("fsdp", FSDP_ON_CPU)):
        proc, ranks = _launch(tmp_path, name, tiny_model_dir, student, env)
        assert proc.returncode == 0, ranks[-6000:] + "\n...\n" + proc.stderr[-1500:]
        # the cache is built once, by the main process, and read by the other
        assert ranks.count("logit cache in") == 1 and "[default0]:INFO llmcompress.methods.distill: building" in ranks
        assert proc.stdout.count("wrote ") == 1 and proc.stdout.count("| perplexity |") == 1, proc.stdout
        notes = json.loads((tmp_path / f"{name}-out" / "llmcompress_report.json").read_text())["notes"]["distill"]
        assert notes["processes"] == 2 and notes["steps"] == 3 and notes["tokens"] == 3 * 2 * 2 * 32
        assert notes.get("sharding") == ("FSDP" if env else None)
        assert (tmp_path / f"{name}-cache" / "index.json").exists()
        runs[name] = load_file(tmp_path / f"{name}-out" / "model.safetensors")
    start = load_file(student / "model.safetensors")
    assert runs["ddp"].keys() == runs["fsdp"].keys() == start.keys()
    for k, w in runs["ddp"].items():
        # same data, seed and averaged gradients: the same weights up to summation order
        torch.testing.assert_close(runs["fsdp"][k], w, rtol=1e-4, atol=1e-5, msg=k)
    assert any(not torch.equal(start[k], w) for k, w in runs["fsdp"].items())  # trained, not the start
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["student", *(f"{n}{s}" for n in runs for s in ("-cache", "-out", ".yaml"))])


def test_fsdp_run_resumes_from_its_checkpoint(tiny_model_dir, tokenizer, tmp_path):
    """FSDP checkpoints hold each process's shard (accelerate writes them); a run killed after its
    step-2 checkpoint and started again with resume ends with the uninterrupted run's weights."""
    from safetensors.torch import load_file

    student = _student_dir(tmp_path, tokenizer)

    def steps(folder, resume=False):
        return (f"    max_steps: 4\n    save_steps: 2\n    checkpoint_dir: {tmp_path / folder}\n"
                + ("    resume: true\n" if resume else ""))

    proc, ranks = _launch(tmp_path, "full", tiny_model_dir, student, FSDP_ON_CPU, distill=steps("ckpt-full"))
    assert proc.returncode == 0, ranks[-6000:]
    proc, ranks = _launch(tmp_path, "cut", tiny_model_dir, student,
                          {**FSDP_ON_CPU, "LLMCOMPRESS_TEST_INTERRUPT_AT_STEP": "2"}, distill=steps("ckpt-cut"))
    assert proc.returncode != 0 and not (tmp_path / "cut-out").exists()
    assert (tmp_path / "ckpt-cut" / "checkpoint-2").is_dir()
    proc, ranks = _launch(tmp_path, "cut", tiny_model_dir, student, FSDP_ON_CPU, distill=steps("ckpt-cut", True))
    assert proc.returncode == 0, ranks[-6000:]
    import json

    notes = json.loads((tmp_path / "cut-out" / "llmcompress_report.json").read_text())["notes"]["distill"]
    assert notes["resumed_from"].endswith("checkpoint-2") and notes["steps"] == 4 and notes["sharding"] == "FSDP"
    a, b = load_file(tmp_path / "full-out" / "model.safetensors"), load_file(tmp_path / "cut-out" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6, msg=k)


def test_bf16_mixed_precision_returns_a_plain_float32_model(tiny_model_dir, tokenizer, tmp_path, monkeypatch):
    """accelerate wraps the forward in autocast for mixed precision; the student handed back must
    compute in its own dtype again, as its checkpoint will (found on CUDA: 8e-3 logit differences)."""
    from transformers import AutoModelForCausalLM

    ids = torch.randint(0, 512, (4, 16), generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "scratch"))
    (tmp_path / "scratch").mkdir()
    ctx = ctx_for(tokenizer, ids)
    student = apply_distill(make_model(layers=1, seed=2),
                            DistillConfig(teacher=str(tiny_model_dir), teacher_dtype="float32", max_steps=2,
                                          batch_size=2, mixed_precision="bf16"), ctx)
    # no checkpoint_dir and no checkpoints: the trainer's scratch folder is gone afterwards
    assert list((tmp_path / "scratch").iterdir()) == [] and ctx.notes["distill"]["checkpoint_dir"] is None
    student.save_pretrained(tmp_path / "s")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "s", dtype=torch.float32).eval()
    with torch.no_grad():
        a, b = student(ids).logits, reloaded(ids).logits
    assert a.dtype == torch.float32 and torch.allclose(a, b, atol=1e-5), (a - b).abs().max()


def test_activation_checkpointing_changes_nothing_but_memory(tiny_model_dir, tokenizer, tmp_path):
    """``gradient_checkpointing: true`` recomputes activations in the backward pass: the same
    weights as without it, and no deprecation warning from transformers' argument names."""
    import warnings

    ids = torch.randint(0, 512, (8, 32), generator=torch.Generator().manual_seed(0))
    common = dict(teacher=str(tiny_model_dir), teacher_dtype="float32", max_steps=2, batch_size=2,
                  learning_rate=1e-3, top_k=0, mixed_precision="no")
    plain = apply_distill(make_model(layers=1, seed=1), DistillConfig(**common), ctx_for(tokenizer, ids))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        recomputed = apply_distill(make_model(layers=1, seed=1), DistillConfig(**common, gradient_checkpointing=True),
                                   ctx_for(tokenizer, ids))
    assert not [w for w in caught if "checkpointing" in str(w.message) and "deprecated" in str(w.message)]
    a, b = final_weights(plain), final_weights(recomputed)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-5)
    assert not torch.equal(a["model.layers.0.mlp.up_proj.weight"],
                           make_model(layers=1, seed=1).state_dict()["model.layers.0.mlp.up_proj.weight"])


def test_hidden_state_loss_matches_its_formula():
    g = torch.Generator().manual_seed(0)
    t = tuple(torch.randn(2, 5, 8, generator=g) for _ in range(3))
    t[1][:, 0] *= 1000  # a massive first-position state counts like any other token
    s = tuple(x + 0.1 * x.norm(dim=-1, keepdim=True) / 8**0.5 * torch.randn(x.shape, generator=g) for x in t)
    pairs = layer_pairs(2, 2)
    assert pairs == [(1, 1), (2, 2)]
    assert hidden_state_loss(t, t, pairs) == 0
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, 3:] = False
    rel = [((s[i] - t[i]).pow(2).sum(-1) / t[i].pow(2).sum(-1))[mask] for i in (1, 2)]
    expect = (rel[0].mean() + rel[1].mean()) / 2
    got = hidden_state_loss(s, t, pairs, mask)
    torch.testing.assert_close(got, expect)
    assert 0.005 < got < 0.05  # about the 1% relative noise added above, at every position
    moved = list(s)
    moved[2] = s[2].clone()
    moved[2][1, 4] += 100.0  # a masked position changes nothing
    torch.testing.assert_close(hidden_state_loss(moved, t, pairs, mask), got)
    with pytest.raises(ValueError, match="same hidden size"):
        hidden_state_loss((None, torch.zeros(1, 2, 4)), (None, torch.zeros(1, 2, 8)), [(1, 1)])


def test_layer_pairs_spread_a_shallower_student_over_the_teacher():
    assert layer_pairs(3, 3) == [(1, 1), (2, 2), (3, 3)]
    assert layer_pairs(2, 4) == [(1, 2), (2, 4)]
    assert layer_pairs(3, 24)[-1] == (3, 24)


def relative_state_error(student, teacher, ids):
    with torch.no_grad():
        s = student(input_ids=ids, output_hidden_states=True).hidden_states
        t = teacher(input_ids=ids, output_hidden_states=True).hidden_states
    return float(hidden_state_loss(s, t, layer_pairs(len(s) - 1, len(t) - 1)))


def perturbed_copy(model_dir, scale=0.5, seed=4):
    """The teacher with noise on every decoder-layer weight: a student as wide as the teacher that
    starts near it, like a pruned copy."""
    from transformers import AutoModelForCausalLM

    student = AutoModelForCausalLM.from_pretrained(model_dir)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in student.named_parameters():
            if ".layers." in name and p.dim() == 2:
                p.add_(scale * p.std() * torch.randn(p.shape, generator=g))
    return student


def test_hidden_state_distillation_pulls_the_students_layers_to_the_teachers(tiny_model_dir, tokenizer):
    """With ``hidden_weight`` the student's decoder-layer outputs move towards the teacher's on the
    training windows; the same training on the logits alone (same data and steps) does not. (Random
    tokens through a random tiny model: only the training windows say anything here; measured:
    0.83 before, 0.42 with the states, 2.10 without.)"""
    from transformers import AutoModelForCausalLM

    teacher = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    ids = torch.randint(0, 512, (8, 32), generator=torch.Generator().manual_seed(0))
    common = dict(teacher=str(tiny_model_dir), teacher_dtype="float32", max_steps=8, batch_size=4,
                  learning_rate=1e-3, alpha=0.0, mixed_precision="no")
    before = relative_state_error(perturbed_copy(tiny_model_dir), teacher, ids)
    ctx = ctx_for(tokenizer, ids)
    with_states = apply_distill(perturbed_copy(tiny_model_dir), DistillConfig(**common, hidden_weight=1.0), ctx)
    assert ctx.notes["distill"]["hidden_weight"] == 1.0
    without = apply_distill(perturbed_copy(tiny_model_dir), DistillConfig(**common), ctx_for(tokenizer, ids))
    after_with = relative_state_error(with_states, teacher, ids)
    after_without = relative_state_error(without, teacher, ids)
    assert after_with < 0.7 * before and after_with < 0.7 * after_without


def test_hidden_weight_needs_the_teacher_in_the_loop():
    with pytest.raises(ConfigError, match="top_k: 0"):
        DistillConfig(teacher="t", hidden_weight=1.0, top_k=32)
    with pytest.raises(ConfigError, match="hidden_weight"):
        DistillConfig(teacher="t", hidden_weight=-1.0)


def test_hidden_weight_with_another_width_is_refused_before_loading(tmp_path, tokenizer):
    from transformers import AutoConfig, AutoModelForCausalLM

    wide = tmp_path / "wide"
    cfg = make_model(layers=1).config
    cfg.hidden_size, cfg.intermediate_size = 384, 1024
    AutoModelForCausalLM.from_config(cfg).save_pretrained(wide)
    tokenizer.save_pretrained(wide)
    student = tmp_path / "student"
    make_model(layers=1).save_pretrained(student)
    tokenizer.save_pretrained(student)
    recipe = Recipe(stages=[DistillConfig(teacher=str(wide), hidden_weight=1.0)], name="d")
    with pytest.raises(ConfigError, match="hidden size is 256 and teacher .*384"):
        compress(str(student), recipe, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cross_entropy_alone_builds_no_cache(tiny_model_dir, tokenizer, tmp_path):
    """alpha 1 never reads the teacher's logits: no cache is built even when top_k is set."""
    ids = torch.randint(0, 512, (4, 16), generator=torch.Generator().manual_seed(0))
    ctx = ctx_for(tokenizer, ids)
    apply_distill(make_model(layers=1, seed=2), DistillConfig(teacher=str(tiny_model_dir), teacher_dtype="float32",
                                                              max_steps=1, batch_size=2, alpha=1.0, top_k=8,
                                                              cache_dir=str(tmp_path / "cache")), ctx)
    assert not (tmp_path / "cache").exists() and "cache_dir" not in ctx.notes["distill"]
    assert ctx.notes["distill"]["steps"] == 1


def test_teacher_correction_fits_the_teacher_to_the_training_text(tiny_model_dir, tokenizer, tmp_path):
    """``teacher_correction_steps`` (Minitron) fine-tunes the teacher on the training windows first:
    the cache then holds a teacher whose cross-entropy on them is below the released teacher's. The
    cache names the correction, so a stage without it refuses that cache, and a second corrected run
    reads it without training the teacher again. With the teacher in the loop the correction runs too."""
    from transformers import AutoModelForCausalLM

    # windows over 32 of the 512 tokens: a few steps teach the teacher to put its mass there
    ids = torch.randint(0, 32, (8, 32), generator=torch.Generator().manual_seed(0))
    common = dict(teacher=str(tiny_model_dir), teacher_dtype="float32", max_steps=2, batch_size=4,
                  learning_rate=1e-3, alpha=0.5, mixed_precision="no")
    corrected = dict(common, top_k=512, cache_dir=str(tmp_path / "c"), teacher_correction_steps=6,
                     teacher_correction_lr=1e-2)
    ctx = ctx_for(tokenizer, ids)
    apply_distill(make_model(layers=1, seed=2), DistillConfig(**corrected), ctx)
    tc = ctx.notes["distill"]["teacher_correction"]
    assert tc["steps"] == 6 and tc["learning_rate"] == 1e-2 and tc["train_loss"] > 0
    cache = TopKCache(tmp_path / "c")
    assert "+corrected(steps=6,lr=0.01" in cache.teacher

    def cross_entropy_on_ids(logits):
        return F.cross_entropy(logits[:, :-1].reshape(-1, 512).float(), ids[:, 1:].reshape(-1)).item()

    cached = torch.zeros(8, 32, 512)
    for i in range(8):  # top-512 of 512: the corrected teacher's full logits
        _, values, indices, _ = cache[i]
        cached[i].scatter_(-1, indices.long(), values.float())
    with torch.no_grad():
        released = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()(ids).logits
    assert cross_entropy_on_ids(cached) < 0.8 * cross_entropy_on_ids(released)

    with pytest.raises(ConfigError, match="holds the logits of teacher .*corrected") as err:
        apply_distill(make_model(layers=1, seed=2), DistillConfig(**dict(corrected, teacher_correction_steps=0)),
                      ctx_for(tokenizer, ids))
    assert err.value.key == "cache_dir"
    ctx = ctx_for(tokenizer, ids)
    apply_distill(make_model(layers=1, seed=2), DistillConfig(**corrected), ctx)
    assert ctx.notes["distill"]["teacher_correction"] == {"steps": 6, "cached": True}
    assert "cache_seconds" not in ctx.notes["distill"]

    ctx = ctx_for(tokenizer, ids)
    apply_distill(make_model(layers=1, seed=2), DistillConfig(**common, top_k=0, teacher_correction_steps=2), ctx)
    assert ctx.notes["distill"]["teacher_correction"]["steps"] == 2


@pytest.mark.parametrize("opts, match", [({"teacher_dtype": "nf4"}, "bitsandbytes nf4 teacher"),
                                         ({"alpha": 1.0}, "never reads"),
                                         ({"teacher_correction_steps": -1}, "teacher_correction_steps")])
def test_teacher_correction_refuses_what_it_cannot_train(opts, match):
    with pytest.raises(ConfigError, match=match) as err:
        DistillConfig(**{"teacher": "t", "teacher_correction_steps": 4, **opts})
    assert err.value.key == "teacher_correction_steps"


def test_teacher_correction_under_a_launcher_is_refused_before_any_work(tiny_model_dir, tmp_path, monkeypatch):
    """Each launched process would correct a teacher of its own: refused in every process, nothing written."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    recipe = Recipe(stages=[DistillConfig(teacher=str(tiny_model_dir), max_steps=2, top_k=8,
                                          cache_dir=str(tmp_path / "cache"), alpha=0.5, teacher_correction_steps=2)],
                    name="d", calibration=CalibrationConfig(num_samples=4, seq_len=16))
    with pytest.raises(ConfigError, match="teacher correction runs in one process") as err:
        compress(str(tiny_model_dir), recipe, tmp_path / "out", evaluation=False)
    assert err.value.key == "teacher_correction_steps"
    assert sorted(p.name for p in tmp_path.iterdir()) == []
