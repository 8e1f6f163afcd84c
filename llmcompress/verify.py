"""Prove that a written model loads with plain ``from_pretrained`` and gives the same logits.

The check runs in a fresh Python process that never imports llmcompress (the script is
``_reload_check.py``, passed with ``python -c`` so the package folder is not on its path).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from .errors import LLMCompressError
from .modeling import model_device

logger = logging.getLogger(__name__)
SCRIPT = Path(__file__).with_name("_reload_check.py")


class VerificationError(LLMCompressError):
    """The saved model does not reproduce the in-memory model."""


def reference_ids(vocab_size: int, seq_len: int = 64, seed: int = 1234) -> torch.Tensor:
    return torch.randint(0, vocab_size, (1, seq_len), generator=torch.Generator().manual_seed(seed))


def reload_logits(model_dir: str | Path, ids: torch.Tensor, env: dict | None = None) -> torch.Tensor:
    """Logits of ``model_dir`` (a directory, or a hub repo id) loaded by plain transformers
    in a fresh process."""
    target = str(Path(model_dir).absolute()) if Path(model_dir).exists() else str(model_dir)
    with tempfile.TemporaryDirectory() as tmp:
        ids_path, out_path = Path(tmp, "ids.pt"), Path(tmp, "logits.pt")
        torch.save(ids, ids_path)
        full_env = {**os.environ, **(env or {}), "PYTHONPATH": ""}
        proc = subprocess.run(
            [sys.executable, "-c", SCRIPT.read_text(), target, str(ids_path), str(out_path)],
            capture_output=True, text=True, env=full_env, cwd=tmp)
        if proc.returncode != 0:
            tail = "\n".join(proc.stderr.strip().splitlines()[-6:])
            raise VerificationError(f"the saved model in '{model_dir}' does not load with plain from_pretrained:\n{tail}")
        return torch.load(out_path)


@torch.no_grad()
def check_reload(model, model_dir: str | Path, atol: float = 1e-4, attempts: int = 3, env: dict | None = None) -> float:
    """Compare in-memory logits with a fresh-process reload; returns the max abs difference.

    A file that is wrong gives the same wrong logits every time, but on some CPUs a float32
    forward does not always repeat itself: plain transformers, run twice on the same ids in one
    process, has differed by 1e-4 of the logits' scale on SmolLM2-135M here (rarely, with no
    llmcompress in the process). So a mismatch is measured again, both sides, up to
    ``attempts`` times, and only one that repeats fails the check. ``env`` is passed to the
    fresh process (for example ``HF_HOME`` when ``model_dir`` is a hub repo id).

    Raises:
        VerificationError: when every attempt differs by more than ``atol`` times the logits' scale.
    """
    ids = reference_ids(model.config.vocab_size)
    seen = []
    for attempt in range(attempts):
        ref = model(ids.to(model_device(model))).logits.float().cpu()
        got = reload_logits(model_dir, ids, env=env)
        diff = (ref - got).abs().max().item()
        bound = atol * max(1.0, ref.abs().max().item())
        if diff <= bound:
            if attempt:
                logger.warning("reload check passed on attempt %d (earlier differences %s, bound %.3g): "
                               "this machine's float32 forward does not always repeat itself",
                               attempt + 1, ", ".join(f"{d:.3g}" for d in seen), bound)
            logger.info("reload check: max |logit difference| = %.3g", diff)
            return diff
        seen.append(diff)
    raise VerificationError(
        f"the saved model in '{model_dir}' gives different logits from the in-memory model "
        f"(max abs difference {', '.join(f'{d:.3g}' for d in seen)} in {attempts} attempts > {bound:.3g}); "
        "the output was not kept")
