"""Perplexity in an anchor's own process, for outputs that cannot be reloaded where the bench
runs (asymmetric int4: compressed-tensors' pack-quantized zero points do not load in
transformers 5.17-5.25, and GPTQ v1 needs gptqmodel). Needs torch only, so it runs in every
anchor environment; the formula is ``llmcompress.evaluate.perplexity``'s: the summed next-token
cross-entropy over every window, divided by the tokens scored."""

import math

import torch


@torch.no_grad()
def ppl_by_text(model, windows: dict) -> dict:
    """``{text: perplexity}`` for ``{text: [n, seq_len] token windows}``, one window at a time."""
    model.eval()
    out = {}
    for text, w in windows.items():
        nll, count = 0.0, 0
        for i in range(len(w)):
            ids = w[i : i + 1]
            logits = model(ids).logits[:, :-1].float()
            nll += torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                                                     reduction="sum").item()
            count += ids[:, 1:].numel()
        out[text] = math.exp(nll / count)
    return out
