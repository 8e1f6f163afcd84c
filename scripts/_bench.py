"""Helpers shared by the benchmark scripts: child processes, peak memory, BENCHMARKS.md sections."""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "BENCHMARKS.md"


def work_dir(path: str | None, prefix: str) -> Path:
    """The benchmark's scratch folder: ``path`` if given (kept, for inspection), otherwise a temp
    folder removed when the script exits, even on error (the outputs of one run reach 8 GB)."""
    if path:
        work = Path(path)
        work.mkdir(parents=True, exist_ok=True)
        return work
    import atexit
    import shutil
    import tempfile

    work = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, work, ignore_errors=True)
    return work


def run_child(cmd: list[str], env: dict | None = None, timeout: int | None = None) -> dict:
    """Run a child that prints one JSON line last; returns it with the wall time added."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=timeout)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed:\n{proc.stderr[-3000:]}")
    line = [ln for ln in proc.stdout.strip().splitlines() if ln.startswith("{")][-1]
    return {**json.loads(line), "wall_s": wall}


def ppl_by_text(model, windows: dict, label: str = "") -> dict:
    """Perplexity on each evaluation text ``{name: windows}``, in eval mode (the mode is restored)."""
    from llmcompress.evaluate import perplexity

    was = model.training
    model.eval()
    out = {t: perplexity(model, w, desc=f"ppl {label} {t}".replace("  ", " "))[0] for t, w in windows.items()}
    model.train(was)
    return out


def evaluate_dir(path, windows: dict, **load_kwargs) -> dict:
    """Load a saved output with plain ``from_pretrained`` and measure it:
    ``{"ppl": {text: perplexity}, "params": count}``; the model is freed afterwards."""
    import gc

    from transformers import AutoModelForCausalLM

    from llmcompress.modeling import count_parameters

    model = AutoModelForCausalLM.from_pretrained(path, **load_kwargs)
    out = {"ppl": ppl_by_text(model, windows, Path(str(path)).name), "params": count_parameters(model)}
    del model
    gc.collect()
    return out


def nf4_ppl(model_dir, windows: dict) -> dict:
    """Perplexity of the checkpoint loaded in bitsandbytes nf4 (double quant, float32 compute like the
    other rows): the 4-bit reference without calibration."""
    from transformers import BitsAndBytesConfig

    bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                             bnb_4bit_compute_dtype=torch.float32)
    return evaluate_dir(model_dir, windows, quantization_config=bnb, dtype=torch.float32)["ppl"]


def cpu_model() -> str:
    """The CPU's model name and its bf16 hardware: AMX tiles, AVX512-BF16 instructions, or neither
    (bf16 emulated, several times slower than float32). Tables from CPUs that differ here do not
    compare, and the default ``calibration_dtype: fast`` picks a different dtype on the last kind."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.machine()
    name = next((l.split(":", 1)[1].strip() for l in info.splitlines() if l.startswith("model name")), platform.machine())
    flags = next((l for l in info.splitlines() if l.startswith("flags")), "").split()
    bf16 = "AMX-BF16" if "amx_bf16" in flags else "AVX512-BF16, no AMX" if "avx512_bf16" in flags else "no native bf16"
    return f"{name}, {bf16}"


def machine() -> str:
    return (f"{platform.machine()} CPU ({cpu_model()}), {os.cpu_count()} cores, torch {torch.__version__}, "
            f"Python {platform.python_version()}")


def invocation(script: str) -> str:
    """The command line that ran ``script`` (``python scripts/NAME.py ARGS``), for a table's header."""
    return f"python scripts/{script}" + (" " + shlex.join(sys.argv[1:]) if len(sys.argv) > 1 else "")


def write_section(name: str, markdown: str) -> None:
    """Replace (or append) the section between ``<!-- bench:NAME -->`` markers in BENCHMARKS.md."""
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    text = BENCHMARKS.read_text() if BENCHMARKS.exists() else "# Benchmarks\n\nEvery table is written by the script named in it.\n"
    block = f"{start}\n{markdown.rstrip()}\n{end}"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    BENCHMARKS.write_text(text)


def python_of(venv: str | Path) -> Path | None:
    exe = Path(venv) / "bin" / "python"
    return exe if exe.exists() else None


def this_python() -> str:
    return sys.executable
