"""The teacher's top-k logit cache: computed once, then training runs without the teacher.

Layout of a cache folder (written atomically: a temporary folder renamed when complete)::

    index.json                       format, teacher, k, temperature, seq_len, samples, vocab size, shards
    shard-00000.safetensors          input_ids [n, T] int32, values [n, T, k] float16, indices [n, T, k] int32,
                                     tail [n, T] float32
    ...

float16 keeps logits to ~0.01 at |logit| < 32 (bfloat16 would round them to 0.125); int32 indices
hold any vocabulary. ``tail`` is the log of the teacher's probability outside its top k at the
distillation temperature, computed in float32 from the full logits, so the losses see a properly
normalized (k + 1)-bucket distribution. At k = 32 that is 196 bytes per token. The token ids travel
with the logits, so a cache is self-contained: training from it needs neither the teacher nor the text.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from ...errors import DataError
from ...export import atomic_directory

FORMAT = "llmcompress-topk-logits-v2"


def cache_key(teacher: str, ids: torch.Tensor, k: int, temperature: float = 1.0, teacher_dtype: str = "") -> str:
    """A digest of what the cache depends on: the teacher and the dtype it ran in (a bf16 teacher's
    logits differ from a float32 one's), the exact token ids, k and the temperature."""
    h = hashlib.sha256(f"{FORMAT}|{teacher}|{teacher_dtype}|{k}|{float(temperature)}|{tuple(ids.shape)}".encode())
    h.update(ids.to(torch.int32).numpy().tobytes())
    return h.hexdigest()[:16]


@torch.no_grad()
def build_cache(teacher, ids: torch.Tensor, folder: str | Path, k: int, *, temperature: float = 1.0,
                teacher_name: str = "", batch_size: int = 4, shard_samples: int = 256, device=None,
                overwrite: bool = False) -> Path:
    """Run the teacher over ``ids`` ``[N, T]`` and store its top-k logits per token, and the log of its
    probability outside them at ``temperature``."""
    device = torch.device(device) if device is not None else next(teacher.parameters()).device
    folder = Path(folder)
    shards = []
    with atomic_directory(folder, overwrite=overwrite) as tmp:
        bar = tqdm(total=len(ids), desc="teacher top-k cache", unit="sample")
        for s0 in range(0, len(ids), shard_samples):
            chunk = ids[s0 : s0 + shard_samples]
            vals, inds, tails = [], [], []
            for b in range(0, len(chunk), batch_size):
                logits = teacher(chunk[b : b + batch_size].to(device)).logits.float()
                top = torch.topk(logits, k, dim=-1)
                scaled = logits / temperature
                lse = torch.logsumexp(scaled, -1)
                rest = torch.logsumexp(scaled.scatter_(-1, top.indices, float("-inf")), -1)
                tails.append((rest - lse).cpu())
                vals.append(top.values.to(torch.float16).cpu())
                inds.append(top.indices.to(torch.int32).cpu())
                bar.update(len(chunk[b : b + batch_size]))
            name = f"shard-{len(shards):05d}.safetensors"
            save_file({"input_ids": chunk.to(torch.int32).contiguous(), "values": torch.cat(vals).contiguous(),
                       "indices": torch.cat(inds).contiguous(), "tail": torch.cat(tails).contiguous()},
                      str(tmp / name))
            shards.append({"file": name, "start": s0, "count": len(chunk)})
        bar.close()
        index = {"format": FORMAT, "teacher": teacher_name, "k": k, "temperature": float(temperature),
                 "num_samples": len(ids),
                 "seq_len": ids.shape[1], "vocab_size": int(teacher.config.vocab_size), "shards": shards}
        (tmp / "index.json").write_text(json.dumps(index, indent=2))
    return folder


class TopKCache:
    """Read access to a cache folder: ``cache[i]`` -> ``(input_ids [T], values [T, k], indices [T, k], tail [T])``."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        path = self.folder / "index.json"
        try:
            self.index = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise DataError(f"{self.folder} is not a teacher logit cache ({path.name}: {exc}); build one with "
                            "top_k > 0 in the distill stage, or delete the folder") from None
        if self.index.get("format") != FORMAT:
            raise DataError(f"{self.folder}: cache format {self.index.get('format')!r}, expected {FORMAT}: delete the "
                            "folder and the distill stage rebuilds it")
        self._tensors: dict[str, dict[str, torch.Tensor]] = {}

    def __len__(self) -> int:
        return self.index["num_samples"]

    @property
    def k(self) -> int:
        return self.index["k"]

    @property
    def temperature(self) -> float:
        return self.index["temperature"]

    @property
    def teacher(self) -> str:
        """The teacher's name, with its correction's settings when it was corrected first."""
        return self.index.get("teacher", "")

    def _shard(self, i: int) -> tuple[dict[str, torch.Tensor], int]:
        for sh in self.index["shards"]:
            if sh["start"] <= i < sh["start"] + sh["count"]:
                if sh["file"] not in self._tensors:
                    with safe_open(str(self.folder / sh["file"]), framework="pt") as f:
                        self._tensors[sh["file"]] = {key: f.get_tensor(key) for key in f.keys()}
                return self._tensors[sh["file"]], i - sh["start"]
        raise IndexError(i)

    def __getitem__(self, i: int):
        t, j = self._shard(int(i))
        return t["input_ids"][j].long(), t["values"][j], t["indices"][j], t["tail"][j]

    def input_ids(self) -> torch.Tensor:
        return torch.stack([self[i][0] for i in range(len(self))])
