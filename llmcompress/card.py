"""Model card (README.md) of an output directory."""

from __future__ import annotations

from .evaluate import Measurement
from .report import markdown

PIP_FOR_FORMAT = {
    "compressed-tensors": "pip install transformers compressed-tensors",
    "gptq": "pip install transformers optimum gptqmodel",
    "bnb": "pip install transformers bitsandbytes",
    "dense": "pip install transformers",
}


def base_license(source) -> str:
    """The base model's licence from its own model card, when there is one to read."""
    from huggingface_hub.repocard import metadata_load

    readme = None
    if getattr(source, "path", None) is not None and (source.path / "README.md").is_file():
        readme = source.path / "README.md"
    elif getattr(source, "kind", "") == "hub" and source.hub_id:
        try:
            from huggingface_hub import hf_hub_download

            readme = hf_hub_download(source.hub_id, "README.md")
        except Exception:  # offline, gated, no card: the licence is simply unknown
            return ""
    if readme is None:
        return ""
    try:
        license = (metadata_load(readme) or {}).get("license", "")
    except Exception:  # a malformed card upstream must not stop the run
        return ""
    return license if isinstance(license, str) else ""


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


def model_card(recipe, source, columns: list[Measurement] | None, weights_format: str) -> str:
    """A model card naming the base model, the methods, the metrics and how to load it."""
    kinds = recipe.kinds
    methods = [s.METHOD for s in recipe.stages]
    lines = ["---", f"base_model: {source.base_model}"]
    if "quantized" in kinds:
        lines.append("base_model_relation: quantized")
    elif "distilled" in kinds:
        lines.append("base_model_relation: finetune")
    license = getattr(source, "license", "") or base_license(source)
    if license:
        lines.append(f"license: {license}")
    lines += ["library_name: transformers", "pipeline_tag: text-generation", "tags:", "- llmcompress"]
    lines += [f"- {m}" for m in methods]
    lines += ["---", "", f"# {source.base_model} ({recipe.name})", ""]
    lines.append(f"Compressed with llmcompress from `{source.base_model}`: {', '.join(methods)}.")
    if recipe.description:
        lines += ["", recipe.description]
    if columns:
        lines += ["", "## Evaluation", "", markdown(columns)]
    pip = PIP_FOR_FORMAT.get(weights_format, PIP_FOR_FORMAT["dense"])
    lines += ["", "## How to load", "", "```bash", pip, "```", "", _versions(weights_format), "", "```python",
              "from transformers import AutoModelForCausalLM, AutoTokenizer",
              f'model = AutoModelForCausalLM.from_pretrained("{REPO_PLACEHOLDER}")',
              f'tokenizer = AutoTokenizer.from_pretrained("{REPO_PLACEHOLDER}")', "```", "",
              "## Recipe", "", "```yaml", recipe.to_yaml().rstrip(), "```", ""]
    return "\n".join(lines)
