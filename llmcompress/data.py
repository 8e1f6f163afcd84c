"""Calibration and evaluation text: the built-in sample, local files, `datasets` names.

One place turns a text source into token windows:

* ``calibration_batches``: ``num_samples`` windows of ``seq_len`` tokens drawn at
  random (fixed seed) from the calibration text, as in GPTQ's reference code;
* ``evaluation_windows``: the first ``max_tokens`` tokens of the held-out text cut into
  consecutive, non-overlapping windows (fixed windows make perplexities comparable).

Sources (the ``source`` key):

* ``wiki_calib`` / ``wiki_eval``: real Wikipedia text shipped with the package
  (CC BY-SA, see ``llmcompress/data/README.md``); the two are disjoint articles;
* ``python_docs``: English technical prose of a different domain, the Python language
  reference topics that ship with every CPython (``pydoc_data.topics``, PSF licence);
* ``python_code``: source code, the first 20 KB of each top-level module of the running
  CPython's standard library (PSF licence): calibration text for code models;
* a path to a ``.txt`` file (paragraphs), or ``.jsonl`` / ``.json`` (one record a line,
  the ``text_field`` column);
* a Hugging Face dataset name, ``NAME`` or ``NAME:CONFIG`` (e.g.
  ``wikitext:wikitext-2-raw-v1``), for users online; ``split`` picks the split;
* for calibration, a blend of sources joined by ``+`` (``wiki_calib+python_code``): the
  windows are split evenly between them (the first ones get the remainder), each drawn from
  its own text. Hessians calibrated on one domain fit that domain: a code model calibrated on
  prose alone loses more on code than it needs to (BENCHMARKS.md, ``gptq_ablation``).

When calibration and evaluation name the same source, calibration draws only from the
first ``1 - holdout`` of its tokens and evaluation reads only the rest, so the two
never overlap.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from .config import ConfigBase, check_range
from .errors import DataError

logger = logging.getLogger(__name__)

BUILTIN_DIR = Path(__file__).parent / "data"
BUILTIN_TEXTS = {"wiki_calib": "wiki_calib.txt", "wiki_eval": "wiki_eval.txt"}
# Fraction of a shared source kept for evaluation when both sides name it.
HOLDOUT = 0.2


@dataclass
class TextSource(ConfigBase):
    """Where text comes from."""

    source: str = field(default="wiki_calib", metadata={"help": "built-in name, file path or datasets name"})
    split: str = field(default="train", metadata={"help": "datasets split (datasets sources only)"})
    text_field: str = field(default="text", metadata={"help": "column / JSON key holding the text"})

    def key(self) -> tuple[str, str, str]:
        return (self.source, self.split, self.text_field)


@dataclass
class CalibrationConfig(TextSource):
    """Calibration data for methods that observe activations (GPTQ, Wanda, SparseGPT)."""

    num_samples: int = field(default=128, metadata={"help": "number of windows"})
    seq_len: int = field(default=512, metadata={"help": "tokens per window"})
    seed: int = field(default=0, metadata={"help": "sampling seed"})

    @classmethod
    def _label(cls) -> str:
        return "calibration"

    def __post_init__(self):
        check_range("num_samples", self.num_samples, 1)
        check_range("seq_len", self.seq_len, 8)


@dataclass
class EvaluationConfig(TextSource):
    """Held-out evaluation: perplexity windows plus speed measurements."""

    source: str = field(default="wiki_eval", metadata={"help": "built-in name, file path or datasets name"})
    max_tokens: int = field(default=4096, metadata={"help": "tokens of evaluation text used for perplexity"})
    seq_len: int = field(default=512, metadata={"help": "perplexity window length"})
    batch_size: int = field(default=1, metadata={"help": "windows per forward pass"})
    latency: bool = field(default=True, metadata={"help": "measure prefill latency and decode tokens/s"})
    decode_tokens: int = field(default=32, metadata={"help": "tokens generated for the decode speed"})

    @classmethod
    def _label(cls) -> str:
        return "evaluation"

    def __post_init__(self):
        check_range("max_tokens", self.max_tokens, 16)
        check_range("seq_len", self.seq_len, 8)
        check_range("batch_size", self.batch_size, 1)
        check_range("decode_tokens", self.decode_tokens, 1)


def _python_docs() -> list[str]:
    import pydoc_data.topics

    return [t.strip() for t in pydoc_data.topics.topics.values() if t.strip()]


def _python_code(per_file: int = 20_000) -> list[str]:
    import sysconfig

    # Every top-level module, cut to its head: many modules rather than a few large ones.
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    docs = [p.read_text(encoding="utf-8", errors="replace")[:per_file] for p in sorted(stdlib.glob("*.py"))]
    return [d.strip() for d in docs if d.strip()]


# Built-in sources made from the running Python rather than shipped files.
GENERATED_TEXTS = {"python_docs": _python_docs, "python_code": _python_code}


def builtin_names() -> list[str]:
    return [*BUILTIN_TEXTS, *GENERATED_TEXTS]


def blend_parts(source: str) -> list[str]:
    """The sources of a ``a+b`` blend, or ``[source]`` (a file whose name holds ``+`` is a file)."""
    if "+" not in source or Path(source).expanduser().is_file():
        return [source]
    return [part.strip() for part in source.split("+")]


def blend_shares(source: str, num_samples: int) -> list[tuple[str, int]]:
    """How many calibration windows each text of ``source`` gives: an even split, the first texts
    taking the remainder (``[(source, num_samples)]`` for a single text)."""
    parts = blend_parts(source)
    share, extra = divmod(num_samples, len(parts))
    return [(part, share + (i < extra)) for i, part in enumerate(parts)]


def check_source(src: TextSource) -> None:
    """Fail early (before any model is loaded) when a local source cannot be read."""
    parts = blend_parts(src.source)
    if len(parts) > 1:
        if not isinstance(src, CalibrationConfig):
            raise DataError(
                f"'{src.source}' blends several texts, which only calibration takes: evaluate on "
                f"one text at a time (e.g. '{parts[0]}')."
            )
        if any(not part for part in parts) or len(set(parts)) < len(parts):
            raise DataError(
                f"calibration blend '{src.source}' has an empty or repeated part: name each text "
                f"once, joined by '+' (e.g. 'wiki_calib+python_code')."
            )
        if src.num_samples < len(parts):
            raise DataError(
                f"calibration blend '{src.source}' has {len(parts)} texts but num_samples="
                f"{src.num_samples}: take at least one window from each."
            )
        for part in parts:
            check_source(replace(src, source=part, num_samples=1))
        return
    if src.source in BUILTIN_TEXTS or src.source in GENERATED_TEXTS:
        return
    path = Path(src.source).expanduser()
    if _looks_like_path(src.source):
        if not path.is_file():
            raise DataError(
                f"text file '{src.source}' does not exist. Give an existing .txt/.jsonl file, "
                f"a built-in text ({', '.join(builtin_names())}) or a datasets name."
            )
        try:
            with open(path, "rb") as fh:
                fh.read(1)
        except OSError as exc:
            raise DataError(f"text file '{src.source}' cannot be read: {exc}") from exc


def _looks_like_path(source: str) -> bool:
    return (
        source.endswith((".txt", ".jsonl", ".json"))
        or "/" in source and Path(source).expanduser().exists()
        or source.startswith((".", "~", "/"))
    )


def load_texts(src: TextSource) -> list[str]:
    """Read the documents of a source as a list of strings."""
    check_source(src)
    if src.source in BUILTIN_TEXTS:
        return _read_txt(BUILTIN_DIR / BUILTIN_TEXTS[src.source])
    if src.source in GENERATED_TEXTS:
        return GENERATED_TEXTS[src.source]()
    if _looks_like_path(src.source):
        path = Path(src.source).expanduser()
        if path.suffix in (".jsonl", ".json"):
            return _read_jsonl(path, src.text_field)
        return _read_txt(path)
    return _read_datasets(src)


def _read_txt(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"text file '{path}' cannot be read as UTF-8 text: {exc}") from exc
    docs = [p.strip() for p in text.split("\n\n") if p.strip()]
    if not docs:
        raise DataError(f"text file '{path}' is empty: give a file with some text in it.")
    return docs


def _read_jsonl(path: Path, text_field: str) -> list[str]:
    docs = []
    try:
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                record = json.loads(line)
                if text_field not in record:
                    raise DataError(
                        f"{path}:{lineno}: no '{text_field}' key in the record (keys: "
                        f"{', '.join(record)}). Set text_field to the key holding the text."
                    )
                docs.append(str(record[text_field]))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"'{path}' cannot be read as JSON lines: {exc}") from exc
    if not docs:
        raise DataError(f"'{path}' holds no records.")
    return docs


def _read_datasets(src: TextSource) -> list[str]:
    from .errors import require

    datasets = require("datasets", purpose=f"the dataset '{src.source}'")
    name, _, config = src.source.partition(":")
    try:
        ds = datasets.load_dataset(name, config or None, split=src.split)
    except Exception as exc:  # network, unknown name, unknown split: all user-fixable
        raise DataError(
            f"cannot load dataset '{src.source}' split '{src.split}': {exc}. Offline, use a "
            f"built-in text ({', '.join(builtin_names())}) or a local .txt/.jsonl file."
        ) from exc
    if src.text_field not in ds.column_names:
        raise DataError(
            f"dataset '{src.source}' has no column '{src.text_field}' "
            f"(columns: {', '.join(ds.column_names)}); set text_field."
        )
    return [t for t in ds[src.text_field] if t and t.strip()]


def tokenize_source(tokenizer, src: TextSource) -> torch.Tensor:
    """All documents of a source as one 1-D tensor of token ids (documents joined by a blank line)."""
    docs = load_texts(src)
    ids = tokenizer("\n\n".join(docs), return_tensors="pt", add_special_tokens=False).input_ids[0]
    return ids


def _holdout_part(ids: torch.Tensor, side: str) -> torch.Tensor:
    """The calibration head / evaluation tail of a text both sides read."""
    cut = int(len(ids) * (1 - HOLDOUT))
    return ids[:cut] if side == "calibration" else ids[cut:]


def calibration_batches(
    tokenizer, cfg: CalibrationConfig, evaluation: EvaluationConfig | None = None
) -> torch.Tensor:
    """``[num_samples, seq_len]`` token windows drawn at random with ``cfg.seed``.

    A blend (``a+b``) takes ``num_samples / len(parts)`` windows from each part, in order.

    Raises:
        DataError: when the text holds fewer than ``seq_len + 1`` tokens.
    """
    if len(blend_parts(cfg.source)) > 1:
        check_source(cfg)
        return torch.cat([
            calibration_batches(tokenizer, replace(cfg, source=part, num_samples=n), evaluation)
            for part, n in blend_shares(cfg.source, cfg.num_samples)
        ])
    ids = tokenize_source(tokenizer, cfg)
    if evaluation is not None and cfg.key() == evaluation.key():
        ids = _holdout_part(ids, "calibration")
    if len(ids) <= cfg.seq_len:
        raise DataError(
            f"calibration text '{cfg.source}' has {len(ids)} tokens, fewer than seq_len="
            f"{cfg.seq_len}: give more text or lower seq_len."
        )
    gen = torch.Generator().manual_seed(cfg.seed)
    starts = torch.randint(0, len(ids) - cfg.seq_len, (cfg.num_samples,), generator=gen)
    return torch.stack([ids[s : s + cfg.seq_len] for s in starts.tolist()])


def evaluation_windows(
    tokenizer, cfg: EvaluationConfig, calibration: CalibrationConfig | None = None
) -> torch.Tensor:
    """``[n_windows, seq_len]``: the first ``max_tokens`` tokens of the evaluation text.

    Raises:
        DataError: when the text holds fewer than one window.
    """
    ids = tokenize_source(tokenizer, cfg)
    # A blend shares a text with evaluation when one of its parts is that text.
    parts = blend_parts(calibration.source) if calibration is not None else []
    if any((part, calibration.split, calibration.text_field) == cfg.key() for part in parts):
        ids = _holdout_part(ids, "evaluation")
    n = min(cfg.max_tokens, len(ids)) // cfg.seq_len
    if n == 0:
        raise DataError(
            f"evaluation text '{cfg.source}' has {len(ids)} tokens, fewer than one window of "
            f"seq_len={cfg.seq_len}: give more text or lower seq_len."
        )
    return ids[: n * cfg.seq_len].view(n, cfg.seq_len)
