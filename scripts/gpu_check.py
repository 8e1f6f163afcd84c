"""GPU checks in one run (about 6-8 minutes on one H100/H200), results to JSON and stdout.

1. CUDA path == CPU path for GPTQ (plain and GPTAQ) and for Wanda / SparseGPT (plain and with
   first_token_weight) on a tiny model, and low_memory on CUDA == the in-memory CUDA path
   (pytest -k cuda).
2. GPTQ timing on one random-weight Llama (16 layers, hidden 2048, MLP 8192, bf16, 128 x 512
   tokens): llmcompress against llm-compressor, same model and tokens, each in its own
   process; per-layer time and peak GPU memory; llmcompress with GPTAQ (gptaq_alpha 0.5) too.
3. bitsandbytes int8 / nf4 against bf16 on that 1.1B-shaped model: footprint, peak memory,
   decode tokens/s.
4. 2:4 semi-structured sparse matmul (both backends) against dense bf16 on Llama-3-8B and
   SmolLM2 layer shapes.
5. One Llama-3-8B-shaped GPTQ run of llmcompress alone (32 layers, 4096 / 14336, GQA 8).
6. The exact global magnitude threshold over that model's 6.98B Linear weights: radix select
   (Triton) against the sampled bracket, each checked by brute-force counts.
7. The GPTQ column loop: Triton block kernel against the CUDA-graph and eager torch loops.

8. Wanda and SparseGPT 50% on the 16-layer model, against llm-compressor's; the distill stage on
   CUDA (bf16 from a top-k cache, QLoRA on nf4); whole magnitude-pruning stages on the 8B shape.

Usage (on the GPU box): python scripts/gpu_check.py OUT_DIR [--budget SECONDS] [--skip=name,name] [--only=name,name]

The GPU box's Python 3.12 has torch, transformers, accelerate and peft but not bitsandbytes,
compressed-tensors, llm-compressor or datasets: carry them as wheels (pip download --no-deps
--python-version 3.12 --platform manylinux...: llmcompressor 0.14.0.1, compressed-tensors 0.19.0,
datasets 5.2.0, dill, multiprocess, loguru, pydantic + pydantic_core, annotated-types,
typing-inspection, auto-round 0.15.1, bitsandbytes 0.50.2), install them with
``pip install --no-deps --target /tmp/site`` and put /tmp/site and the repository on PYTHONPATH.
Render the results with scripts/gpu_report.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
OUT = Path(sys.argv[1] if len(sys.argv) > 1 else "gpu_out")
OUT.mkdir(parents=True, exist_ok=True)
BUDGET = float(sys.argv[sys.argv.index("--budget") + 1]) if "--budget" in sys.argv else 480.0
T0 = time.perf_counter()
RESULTS: dict = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}


def left() -> float:
    return BUDGET - (time.perf_counter() - T0)


def save():
    (OUT / "gpu_results.json").write_text(json.dumps(RESULTS, indent=2, default=str))


def section(name, need_s):
    def deco(fn):
        def run(*a, **k):
            if left() < need_s:
                RESULTS[name] = {"skipped": f"only {left():.0f}s of the budget left, needs ~{need_s}s"}
                print(f"== {name}: skipped (time budget)", flush=True)
                return None
            print(f"== {name} (budget left {left():.0f}s)", flush=True)
            t = time.perf_counter()
            try:
                out = fn(*a, **k)
                RESULTS[name] = {"result": out, "section_s": round(time.perf_counter() - t, 1)}
            except Exception as exc:  # keep going: one broken section must not lose the others
                import traceback

                traceback.print_exc()
                RESULTS[name] = {"error": repr(exc)[:2000]}
                out = None
            print(json.dumps({name: RESULTS[name]}, default=str)[:3000], flush=True)
            save()
            return out
        run.__name__ = fn.__name__
        return run
    return deco


def llama_config(layers, hidden, inter, heads, kv, vocab):
    from transformers import LlamaConfig

    return LlamaConfig(num_hidden_layers=layers, hidden_size=hidden, intermediate_size=inter,
                       num_attention_heads=heads, num_key_value_heads=kv, vocab_size=vocab,
                       max_position_embeddings=4096, tie_word_embeddings=False)


@torch.no_grad()
def random_model(cfg, device):
    from transformers import AutoModelForCausalLM

    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    return model.eval()


@section("cuda_equals_cpu", 60)
def cuda_equals_cpu():
    from tests.conftest import make_model, make_tokenizer
    from tests.unit.test_gptq import cpu_cuda_agreement

    d = Path("/tmp/tiny-llama")
    make_model().save_pretrained(d)
    make_tokenizer().save_pretrained(d)
    agree = cpu_cuda_agreement(d)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--tb=short", "-rf",
                           "tests/unit/test_gptq.py", "tests/unit/test_sparsity.py", "-k", "cuda"], cwd=ROOT, capture_output=True, text=True)
    (OUT / "pytest_cuda.log").write_text(proc.stdout + proc.stderr)  # the failures' tracebacks
    return {"logit_deviation_cpu": agree["cpu"][0], "logit_deviation_cuda": agree["cuda"][0],
            "objective_cpu": agree["cpu"][1], "objective_cuda": agree["cuda"][1],
            "pytest_returncode": proc.returncode, "pytest_tail": proc.stdout.strip().splitlines()[-6:]}


@section("gptq_kernels_agree", 45)
def kernels_agree():
    """The Triton block kernel against the CUDA-graph and eager torch loops on one 3072 x 2048 weight."""
    from llmcompress.methods.gptq import gptq as G
    from llmcompress.methods.gptq.hessian import accumulate_hessian
    from llmcompress.methods.quant.grid import QuantArgs

    gen = torch.Generator(device="cuda").manual_seed(0)
    X = torch.randn(4096, 2048, device="cuda", generator=gen)
    W = torch.randn(3072, 2048, device="cuda", generator=gen)
    W[W.abs() < 0.02] = 0  # pruned weights: exercises the keep-mask
    H, _ = accumulate_hessian(None, X, 0)
    out = {}
    for sym, act in ((True, True), (False, True), (True, False)):
        args = QuantArgs(4, 128, sym)
        timings, results = {}, {}
        for mode in ("triton", "graph", "eager"):
            os.environ["LLMCOMPRESS_GPTQ_KERNEL"] = mode
            G.gptq_quantize(W, H, args, act_order=act)  # warm-up / compile / capture
            torch.cuda.synchronize()
            t = time.perf_counter()
            results[mode] = G.gptq_quantize(W, H, args, act_order=act)
            torch.cuda.synchronize()
            timings[mode] = round(time.perf_counter() - t, 4)
        os.environ.pop("LLMCOMPRESS_GPTQ_KERNEL")
        ref = results["eager"]
        out[f"sym={sym} act_order={act}"] = {
            "seconds": timings,
            **{f"{m}_identical_to_eager": bool(torch.equal(results[m].weight, ref.weight)) for m in ("triton", "graph")},
            **{f"{m}_weights_differing": float((results[m].weight != ref.weight).float().mean()) for m in ("triton", "graph")},
            "loss": {m: round(r.loss, 3) for m, r in results.items()},
            "zeros_kept": bool((results["triton"].weight[W == 0] == 0).all()),
        }
    # Hessian of bf16 inputs: TF32 tensor cores (the CUDA path) against float32 CUDA cores
    x = torch.randn(8192, 4096, device="cuda", generator=gen).to(torch.bfloat16)
    ref = x.double().t() @ x.double() * (2.0 / x.shape[0])
    hs = {}
    for label, xin in (("tf32 (bf16 input)", x), ("ieee fp32", x.float())):
        accumulate_hessian(None, xin, 0)
        torch.cuda.synchronize()
        t = time.perf_counter()
        H, _ = accumulate_hessian(None, xin, 0)
        torch.cuda.synchronize()
        hs[label] = {"seconds": round(time.perf_counter() - t, 4),
                     "max_rel_err_vs_fp64": float(((H.double() - ref).abs().max() / ref.abs().max()))}
    out["hessian_8192x4096"] = hs
    return out


def llmcompress_gptq(model, ids, group_size, **options):
    from llmcompress.context import Context
    from llmcompress.methods.gptq import GPTQConfig, apply_gptq

    cfg = GPTQConfig(bits=4, group_size=group_size, act_order=True, damp=0.01, **options)
    ctx = Context(device=torch.device("cuda"), calibration=lambda: ids)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    apply_gptq(model, cfg, ctx)
    torch.cuda.synchronize()
    wall = time.perf_counter() - t
    from llmcompress.methods.gptq.gptq import kernel_mode

    layer_s = ctx.notes["gptq"]["layer_seconds"]
    maths = sum(v["seconds"] for v in ctx.notes["gptq"]["layers"].values())
    return {"gptq_s": round(wall, 2), "per_layer_s_median": round(sorted(layer_s)[len(layer_s) // 2], 3),
            "per_layer_s": [round(x, 3) for x in layer_s], "gptq_maths_s": round(maths, 2),
            "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20),
            "column_loop": kernel_mode(torch.device("cuda"))}


# llm-compressor child processes: argv = MODEL_DIR IDS.pt ARG; the model in bf16, a word-level
# tokenizer over its vocabulary (random weights have no real one) and the ids as a dataset.
LC_PRELUDE = r'''
import json, sys, time, torch
from datasets import Dataset
from llmcompressor import oneshot
from tokenizers import Tokenizer, models as tok_models
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast
model_dir, ids_path, arg = sys.argv[1], sys.argv[2], sys.argv[3]
ids = torch.load(ids_path)
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16)
vocab = {f"t{i}": i for i in range(model.config.vocab_size)}
tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(tok_models.WordLevel(vocab, unk_token="t0")), unk_token="t0", pad_token="t0")
ds = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()})
'''

LC_CHILD = LC_PRELUDE + r'''
from llmcompressor.modifiers.quantization import GPTQModifier
g = int(arg)
recipe = GPTQModifier(config_groups={"group_0": {"targets": ["Linear"], "weights": {"num_bits": 4, "type": "int",
    "symmetric": True, "strategy": "group", "group_size": g, "actorder": "static"}}}, ignore=["lm_head"],
    dampening_frac=0.01, block_size=128)
torch.cuda.reset_peak_memory_stats()
t = time.perf_counter()
oneshot(model=model, dataset=ds, recipe=recipe, tokenizer=tok, num_calibration_samples=len(ids),
        max_seq_length=ids.shape[1], shuffle_calibration_samples=False)
torch.cuda.synchronize()
print(json.dumps({"gptq_s": round(time.perf_counter() - t, 2), "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20)}))
'''


@section("gptq_16layer_2048_8192", 150)
def gptq_16layer():
    cfg = llama_config(16, 2048, 8192, 16, 16, 32000)
    model = random_model(cfg, "cuda")
    mdir = Path("/tmp/rand16")
    model.save_pretrained(mdir)
    model.to("cpu")  # like a model larger than the GPU: layers visit the GPU one at a time
    ids = torch.randint(0, cfg.vocab_size, (128, 512), generator=torch.Generator().manual_seed(0))
    torch.save(ids, "/tmp/rand16_ids.pt")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    ours = llmcompress_gptq(model, ids, 128)
    out = {"llmcompress": ours}
    if left() > 240:  # GPTAQ on the same model: the time and memory its reference stream costs
        model.load_state_dict(state)
        out["llmcompress_gptaq_0.5"] = llmcompress_gptq(model, ids, 128, gptaq_alpha=0.5)
    del model, state
    torch.cuda.empty_cache()
    proc = subprocess.run([sys.executable, "-c", LC_CHILD, str(mdir), "/tmp/rand16_ids.pt", "128"],
                          capture_output=True, text=True, timeout=max(60, left() - 200))
    if proc.returncode == 0:
        out["llm-compressor"] = json.loads(proc.stdout.strip().splitlines()[-1])
        out["time_ratio_llmcompress_over_llmcompressor"] = round(ours["gptq_s"] / out["llm-compressor"]["gptq_s"], 3)
    else:
        out["llm-compressor"] = {"error": proc.stderr[-1500:]}
    return out


@section("bnb_decode_1b_shape", 60)
def bnb_decode():
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    res = {}
    prompt = torch.randint(0, 32000, (1, 32), generator=torch.Generator().manual_seed(0)).cuda()
    for label, qc in [("bf16", None),
                      ("int8", BitsAndBytesConfig(load_in_8bit=True)),
                      ("nf4", BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                 bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16))]:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        kw = {"quantization_config": qc} if qc else {}
        model = AutoModelForCausalLM.from_pretrained("/tmp/rand16", dtype=torch.bfloat16, device_map="cuda", **kw).eval()
        gen = dict(max_new_tokens=64, min_new_tokens=64, do_sample=False, pad_token_id=0)
        model.generate(prompt, **gen)  # warm-up
        runs = []
        for _ in range(3):
            torch.cuda.synchronize()
            t = time.perf_counter()
            model.generate(prompt, **gen)
            torch.cuda.synchronize()
            runs.append(64 / (time.perf_counter() - t))
        res[label] = {"decode_tok_s": round(sorted(runs)[1], 1), "decode_tok_s_runs": [round(r, 1) for r in runs],
                      "footprint_mb": round(model.get_memory_footprint() / 2**20),
                      "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20)}
        del model
    return res


@section("sparse_2of4_matmul", 40)
def sparse_matmul():
    from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

    shapes = {"8B q/o 4096x4096": (4096, 4096), "8B up 14336x4096": (14336, 4096), "8B down 4096x14336": (4096, 14336),
              "SmolLM2 up 1536x576": (1536, 576), "SmolLM2 down 576x1536": (576, 1536)}
    res = {}
    for backend, force_cutlass in (("cusparselt", False), ("cutlass", True)):
        SparseSemiStructuredTensor._FORCE_CUTLASS = force_cutlass
        for name, (out_f, in_f) in shapes.items():
            w = torch.randn(out_f, in_f, device="cuda", dtype=torch.bfloat16)
            mask = torch.tensor([1, 1, 0, 0], device="cuda", dtype=torch.bool).repeat(out_f, in_f // 4)
            w = w * mask
            try:
                ws = to_sparse_semi_structured(w)
            except Exception as exc:
                res[f"{backend} {name}"] = {"error": repr(exc)[:200]}
                continue
            for tokens in (16, 512, 4096):
                x = torch.randn(tokens, in_f, device="cuda", dtype=torch.bfloat16)

                def bench(fn, n=50):
                    for _ in range(5):
                        fn()
                    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    s.record()
                    for _ in range(n):
                        fn()
                    e.record()
                    torch.cuda.synchronize()
                    return s.elapsed_time(e) / n

                try:
                    dense = bench(lambda: torch.nn.functional.linear(x, w))
                    sparse = bench(lambda: torch.nn.functional.linear(x, ws))
                    res[f"{backend} {name} tokens={tokens}"] = {"dense_ms": round(dense, 4), "sparse_ms": round(sparse, 4),
                                                               "speedup": round(dense / sparse, 3)}
                except Exception as exc:
                    res[f"{backend} {name} tokens={tokens}"] = {"error": repr(exc)[:200]}
    SparseSemiStructuredTensor._FORCE_CUTLASS = False
    return res


STATE: dict = {}


@section("gptq_llama3_8b_shape", 150)
def gptq_8b():
    cfg = llama_config(32, 4096, 14336, 32, 8, 128256)
    model = random_model(cfg, "cuda")  # 8B bf16 on the GPU; layers are already where they run
    ids = torch.randint(0, cfg.vocab_size, (128, 512), generator=torch.Generator().manual_seed(0))
    out = llmcompress_gptq(model, ids, 128)
    STATE["model"] = model
    return out


@section("global_threshold_8b_shape", 40)
def global_threshold():
    from llmcompress.methods.prune.threshold import global_kth_magnitude

    model = STATE.get("model")
    if model is None:
        model = random_model(llama_config(32, 4096, 14336, 32, 8, 128256), "cuda")
    ws = [m.weight for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"]
    total = sum(w.numel() for w in ws)
    k = total // 2
    out = {"weights": total, "dtype": str(ws[0].dtype)}
    for method in ("count", "radix", "sample"):
        os.environ["LLMCOMPRESS_THRESHOLD"] = method
        times, res = [], None
        for _ in range(5 if method == "count" else 3):
            torch.cuda.synchronize()
            t = time.perf_counter()
            res = global_kth_magnitude(ws, k)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        out[method] = {"result": res, "seconds": [round(x, 4) for x in times], "best_s": round(min(times[1:]), 4)}
    os.environ.pop("LLMCOMPRESS_THRESHOLD")
    thr, below, equal = out["count"]["result"]
    # brute-force counts: exactly `below` scores under the threshold and `equal` at it
    n_below = sum(int((w.abs() < thr).sum()) for w in ws)
    n_equal = sum(int((w.abs() == thr).sum()) for w in ws)
    out["exact"] = n_below == below and n_equal == equal and below < k <= below + equal
    out["methods_agree"] = out["count"]["result"] == out["radix"]["result"] == out["sample"]["result"]
    return out


LC_PRUNE_CHILD = LC_PRELUDE + r'''
from llmcompressor.modifiers.pruning import WandaPruningModifier
from llmcompressor.modifiers.pruning.sparsegpt import SparseGPTModifier
method = arg
kw = dict(targets=["Linear"], ignore=["lm_head"], sparsity=0.5, mask_structure="0:0")
recipe = WandaPruningModifier(**kw) if method == "wanda" else SparseGPTModifier(block_size=128, dampening_frac=0.01, **kw)
torch.cuda.reset_peak_memory_stats()
t = time.perf_counter()
oneshot(model=model, dataset=ds, recipe=recipe, tokenizer=tok, num_calibration_samples=len(ids),
        max_seq_length=ids.shape[1], shuffle_calibration_samples=False)
torch.cuda.synchronize()
print(json.dumps({"prune_s": round(time.perf_counter() - t, 2), "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20)}))
'''


@section("wanda_sparsegpt_16layer", 150)
def prune_16layer():
    """Wanda and SparseGPT 50% on CUDA against llm-compressor's, same random model and tokens."""
    from transformers import AutoModelForCausalLM

    from llmcompress.context import Context
    from llmcompress.methods.sparsegpt import SparseGPTConfig
    from llmcompress.methods.wanda import WandaConfig
    from llmcompress.registry import get_method

    STATE.pop("model", None)  # the 8B-shaped model of earlier sections would count in the peaks (15 GB)
    torch.cuda.empty_cache()
    mdir = Path("/tmp/rand16")
    if not mdir.exists():
        random_model(llama_config(16, 2048, 8192, 16, 16, 32000), "cuda").save_pretrained(mdir)
    ids = torch.randint(0, 32000, (128, 512), generator=torch.Generator().manual_seed(0))
    torch.save(ids, "/tmp/rand16_ids.pt")
    out = {"gpu_mb_allocated_before": round(torch.cuda.memory_allocated() / 2**20)}
    for name, cfg in (("wanda", WandaConfig(sparsity=0.5)), ("sparsegpt", SparseGPTConfig(sparsity=0.5))):
        model = AutoModelForCausalLM.from_pretrained(mdir, dtype=torch.bfloat16).eval()  # on CPU, layers visit the GPU
        ctx = Context(device=torch.device("cuda"), calibration=lambda: ids)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        get_method(cfg.METHOD).apply(model, cfg, ctx)
        torch.cuda.synchronize()
        ours = {"prune_s": round(time.perf_counter() - t, 2), "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20)}
        lin = [m.weight for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"]
        ours["sparsity"] = round(sum(int((w == 0).sum()) for w in lin) / sum(w.numel() for w in lin), 4)
        del model
        out[name] = {"llmcompress": ours}
        RESULTS["wanda_sparsegpt_16layer"] = {"partial": out}  # on disk if the run dies; replaced when done
        save()
        try:
            proc = subprocess.run([sys.executable, "-c", LC_PRUNE_CHILD, str(mdir), "/tmp/rand16_ids.pt", name],
                                  capture_output=True, text=True, timeout=max(150, left()))
            lc = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else {"error": proc.stderr[-1500:]}
        except subprocess.TimeoutExpired:
            lc = {"error": "timed out"}
        out[name] = {"llmcompress": ours, "llm-compressor": lc}
        if "prune_s" in lc:
            out[name]["time_ratio"] = round(ours["prune_s"] / lc["prune_s"], 3)
    return out


@section("distill_cuda", 60)
def distill_cuda():
    """The distill stage on CUDA: bf16 mixed precision from a top-k cache, and a QLoRA student
    (bitsandbytes nf4 on the GPU); each output reloaded in a fresh process."""
    import shutil

    from llmcompress import Recipe, compress
    from llmcompress.data import CalibrationConfig
    from llmcompress.methods.distill import DistillConfig
    from tests.conftest import make_model, make_tokenizer

    root = Path("/tmp/distill_cuda")
    shutil.rmtree(root, ignore_errors=True)
    for name, layers, seed in (("teacher", 4, 0), ("student", 2, 3)):
        make_model(layers=layers, seed=seed).save_pretrained(root / name)
        make_tokenizer().save_pretrained(root / name)
    out = {}
    for label, kw in (("bf16, top-16 cache", dict(top_k=16, cache_dir=str(root / "cache"))),
                      ("QLoRA r=8, teacher online", dict(lora_r=8, qlora=True, learning_rate=1e-3))):
        recipe = Recipe(stages=[DistillConfig(teacher=str(root / "teacher"), max_steps=20, batch_size=4, **kw)],
                        name="d", calibration=CalibrationConfig(num_samples=32, seq_len=64))
        t = time.perf_counter()
        res = compress(str(root / "student"), recipe, root / f"out-{len(out)}", evaluation=False, device="cuda")
        n = res.notes["distill"]
        out[label] = {"seconds": round(time.perf_counter() - t, 1), "train_loss": round(n["train_loss"], 4),
                      "steps": n["steps"], "reload_max_abs_diff": res.reload_max_abs_diff}
    return out


@section("prune_apply_8b_shape", 60)
def prune_apply_8b():
    """Whole magnitude-pruning stages on the 8B-shaped model on the GPU: global (threshold + masks,
    in place) and OWL."""
    from llmcompress.methods.prune import PruneConfig, apply_prune

    model = STATE.get("model") or random_model(llama_config(32, 4096, 14336, 32, 8, 128256), "cuda")
    lin = [m.weight for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"]
    out = {}
    for scope in ("global", "owl", "layer"):
        torch.cuda.synchronize()
        t = time.perf_counter()
        apply_prune(model, PruneConfig(sparsity=0.5, scope=scope))
        torch.cuda.synchronize()
        zeros = sum(int((w == 0).sum()) for w in lin)
        out[scope] = {"seconds": round(time.perf_counter() - t, 3), "zero_fraction": round(zeros / sum(w.numel() for w in lin), 6)}
        with torch.no_grad():  # fresh random weights for the next scope (zeros would be ties)
            for w in lin:
                w.normal_(0, 0.02)
    return out


if __name__ == "__main__":
    skip = {name for a in sys.argv if a.startswith("--skip=") for name in a[7:].split(",")}
    only = {name for a in sys.argv if a.startswith("--only=") for name in a[7:].split(",")}
    for fn in (cuda_equals_cpu, kernels_agree, gptq_16layer, gptq_8b, global_threshold, sparse_matmul, bnb_decode,
               distill_cuda, prune_16layer, prune_apply_8b):
        if fn.__name__ in skip or (only and fn.__name__ not in only):
            continue
        fn()
    RESULTS["total_s"] = round(time.perf_counter() - T0, 1)
    save()
    print("done", RESULTS["total_s"])
