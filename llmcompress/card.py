"""Model card (README.md) of an output directory."""

from __future__ import annotations

from pathlib import Path

from .evaluate import Measurement
from .report import markdown

PIP_FOR_FORMAT = {
    "compressed-tensors": "pip install transformers compressed-tensors",
    "gptq": "pip install transformers optimum gptqmodel",
    "bnb": "pip install transformers bitsandbytes",
    "dense": "pip install transformers",
}


def _base_card(source) -> dict:
    """The metadata of the base model's own card (local README.md, or the Hub's), if readable."""
    from huggingface_hub.repocard import metadata_load

    readme = None
    if getattr(source, "path", None) is not None and (source.path / "README.md").is_file():
        readme = source.path / "README.md"
    elif getattr(source, "kind", "") == "hub" and source.hub_id:
        try:
            from huggingface_hub import hf_hub_download

            readme = hf_hub_download(source.hub_id, "README.md")
        except Exception:  # offline, gated, no card: nothing is known
            return {}
    if readme is None:
        return {}
    try:
        return metadata_load(readme) or {}
    except Exception:  # a malformed card upstream must not stop the run
        return {}


def _is_repo_id(name) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not isinstance(name, str) or name.count("/") != 1 or name.startswith((".", "/", "~")):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def base_model_and_license(source) -> tuple[str | None, str]:
    """``base_model`` must be a Hub repo id (the Hub rejects local paths): the source's hub id,
    else the ``base_model`` its own card names; the licence from the alias or that card."""
    meta = None
    base = getattr(source, "hub_id", None)
    if not _is_repo_id(base):
        meta = _base_card(source)
        base = meta.get("base_model")
        base = base[0] if isinstance(base, list) and len(base) == 1 else base
        base = base if _is_repo_id(base) else None
    license = getattr(source, "license", "")
    if not license:
        meta = _base_card(source) if meta is None else meta
        license = meta.get("license", "") if isinstance(meta.get("license", ""), str) else ""
    return base, license


def _versions(weights_format: str) -> str:
    import importlib.metadata as md

    names = ["transformers", "torch"] + {"compressed-tensors": ["compressed-tensors"], "gptq": ["gptqmodel"],
                                         "bnb": ["bitsandbytes"]}.get(weights_format, [])
    found = []
    for name in ["llmcompress"] + names:
        try:
            found.append(f"{name} {md.version(name)}")
        except md.PackageNotFoundError:
            continue
    return "Written with " + ", ".join(found) + "."


# The loading snippet names this; ``llmcompress push`` replaces it with the repo id.
REPO_PLACEHOLDER = "PATH_OR_REPO_ID"


def _distill_section(d: dict) -> list[str]:
    tc = d.get("teacher_correction")  # Minitron's teacher correction: the teacher fine-tuned on the same text first
    correction = [f"| teacher correction | {tc['steps']} steps of cross-entropy on the training data before distilling" +
                  (" (logits read from the corrected teacher's cache)" if tc.get("cached") else
                   f" (lr {tc['learning_rate']:g}, final loss {tc['train_loss']:.4f})") + " |"] if tc else []
    return ["", "## Distillation", "",
            f"Student trained on the next-token distribution of `{d['teacher']}` "
            f"({d['teacher_parameters']:,} parameters; the student has {d['student_parameters']:,}).", "",
            "| | |", "|---|---|",
            f"| loss | {d['loss']} (temperature {d['temperature']}, cross-entropy weight {d['alpha']}) |",
            f"| teacher signal | {'top-' + str(d['top_k']) + ' logit cache' if d['top_k'] else 'full logits, online'}"
            f"{', teacher in ' + d['teacher_dtype'] if d.get('teacher_dtype') else ''} |",
            f"| training data | {d['samples']} windows of {d['seq_len']} tokens ({d.get('data', 'calibration text')}) |",
            *correction, f"| steps | {d['steps']} |", f"| tokens seen | {d['tokens']:,} |",
            f"| final training loss | {d['train_loss']:.4f} |"]


def model_card(recipe, source, columns: list[Measurement] | None, weights_format: str, notes: dict | None = None) -> str:
    """A model card naming the base model, the methods, the metrics and how to load it."""
    kinds = recipe.kinds
    methods = [s.METHOD for s in recipe.stages]
    base, license = base_model_and_license(source)
    lines = ["---"]
    if base:
        lines.append(f"base_model: {base}")
        if "quantized" in kinds:
            lines.append("base_model_relation: quantized")
        elif "distilled" in kinds:
            lines.append("base_model_relation: finetune")
    if license:
        lines.append(f"license: {license}")
    lines += ["library_name: transformers", "pipeline_tag: text-generation", "tags:", "- llmcompress"]
    lines += [f"- {m}" for m in methods]
    origin = source.hub_id or base or Path(str(source.spec)).name
    lines += ["---", "", f"# {origin} ({recipe.name})", ""]
    lines.append(f"Compressed with llmcompress from `{origin}`: {', '.join(methods)}.")
    if recipe.description:
        lines += ["", recipe.description]
    if columns:
        lines += ["", "## Evaluation", "", markdown(columns)]
    elif notes and notes.get("low_memory"):
        lines += ["", "## Evaluation", "", "Written one decoder layer at a time (`low_memory`), so llmcompress did not "
                  "evaluate it; measure it with `llmcompress eval DIR`."]
    if notes and "distill" in notes:
        lines += _distill_section(notes["distill"])
    pip = PIP_FOR_FORMAT.get(weights_format, PIP_FOR_FORMAT["dense"])
    lines += ["", "## How to load", "", "```bash", pip, "```", "", _versions(weights_format), "", "```python",
              "from transformers import AutoModelForCausalLM, AutoTokenizer",
              f'model = AutoModelForCausalLM.from_pretrained("{REPO_PLACEHOLDER}")',
              f'tokenizer = AutoTokenizer.from_pretrained("{REPO_PLACEHOLDER}")', "```", "",
              "## Recipe", "", "```yaml", recipe.to_yaml().rstrip(), "```", ""]
    return "\n".join(lines)
