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


def model_card(recipe, source, columns: list[Measurement] | None, weights_format: str) -> str:
    """A model card naming the base model, the methods, the metrics and how to load it."""
    kinds = recipe.kinds
    methods = [s.METHOD for s in recipe.stages]
    lines = ["---", f"base_model: {source.base_model}"]
    if "quantized" in kinds:
        lines.append("base_model_relation: quantized")
    elif "distilled" in kinds:
        lines.append("base_model_relation: finetune")
    if getattr(source, "license", ""):
        lines.append(f"license: {source.license}")
    lines += ["library_name: transformers", "pipeline_tag: text-generation", "tags:", "- llmcompress"]
    lines += [f"- {m}" for m in methods]
    lines += ["---", "", f"# {source.base_model} ({recipe.name})", ""]
    lines.append(f"Compressed with llmcompress from `{source.base_model}`: {', '.join(methods)}.")
    if recipe.description:
        lines += ["", recipe.description]
    if columns:
        lines += ["", "## Evaluation", "", markdown(columns)]
    pip = PIP_FOR_FORMAT.get(weights_format, PIP_FOR_FORMAT["dense"])
    lines += ["", "## How to load", "", "```bash", pip, "```", "", "```python",
              "from transformers import AutoModelForCausalLM, AutoTokenizer",
              'model = AutoModelForCausalLM.from_pretrained("PATH_OR_REPO_ID")',
              'tokenizer = AutoTokenizer.from_pretrained("PATH_OR_REPO_ID")', "```", "",
              "## Recipe", "", "```yaml", recipe.to_yaml().rstrip(), "```", ""]
    return "\n".join(lines)
