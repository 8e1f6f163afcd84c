"""Why OWL Wanda on Qwen2.5-Coder-0.5B loses held-out Wikipedia on some calibration draws.

Two measurements, one run, written to BENCHMARKS.md (section ``owl_sink``):

1. OWL's per-layer sparsities (Wanda scores, M=10, lambda=0.08, 50%) from each calibration draw
   (32 x 512 tokens of ``wiki_calib``, the draws of ``bench_prune.py --seeds``): does the allocation
   move with the draw?
2. Wanda at 50% in every decoder layer except one (``--layer``), whose sparsity sweeps
   ``--sweep``, on one draw (``--seed``): the loss of chosen evaluation windows and the largest
   hidden-state magnitude at the window's first position after each of the first decoder layers.
   Qwen2.5 forms a massive activation there (the attention sink; Sun et al., "Massive Activations
   in Large Language Models", 2024) through a few large down_proj weights (Yu et al., "The Super
   Weight in Large Language Models", 2024); when it does not form, the whole window degrades.

Usage: python scripts/diagnose_owl_sink.py [--model qwen2.5-coder-0.5b] [--layer 1] [--sweep 0.5 0.577 0.584 0.62]
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F

from _bench import invocation, machine, write_section
import llmcompress.methods.wanda as wanda
from llmcompress import models
from llmcompress.context import Context
from llmcompress.data import CalibrationConfig, EvaluationConfig, calibration_batches, evaluation_windows
from llmcompress.methods.prune.apply import decoder_layer_groups


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--seed", type=int, default=1, help="calibration draw of the sweep")
    ap.add_argument("--layer", type=int, default=1)
    ap.add_argument("--sweep", nargs="+", type=float, default=[0.5, 0.577, 0.584, 0.62])
    ap.add_argument("--windows", nargs="+", type=int, default=[0, 8, 15], help="wiki_eval 512-token windows to show")
    ap.add_argument("--depth", type=int, default=6, help="decoder layers whose first-position output is shown")
    ap.add_argument("--section", default="owl_sink")
    args = ap.parse_args()
    model, tok, src = models.load(args.model, dtype="float32")
    win = evaluation_windows(tok, EvaluationConfig(source="wiki_eval", max_tokens=8192, seq_len=512))
    ids = {s: calibration_batches(tok, CalibrationConfig(num_samples=32, seq_len=512, seed=s)) for s in sorted({*args.seeds, args.seed})}
    cfg = wanda.WandaConfig(sparsity=0.5, allocation="owl", first_token_weight=1)  # the plain mean bench:owl_sink studied
    layers = cfg.select(model)
    groups = list(decoder_layer_groups(model, layers).values())
    alloc = {}
    for s in args.seeds:
        a = wanda.owl_sparsity(model, layers, cfg, Context(tokenizer=tok, calibration=lambda s=s: ids[s]))
        alloc[s] = [a[names[0]] for names in groups]

    rows = [probe(model, win, args, "dense")]
    del model
    owl_sparsity = wanda.owl_sparsity
    try:
        for value in args.sweep:
            m, _, _ = models.load(src, dtype="float32")
            fixed = {n: (value if i == args.layer else 0.5) for i, names in enumerate(groups) for n in names}
            # The sweep sets the per-layer sparsities itself: OWL's allocation step is replaced by them.
            wanda.owl_sparsity = lambda *a, fixed=fixed: fixed
            wanda.apply_wanda(m, cfg, Context(tokenizer=tok, calibration=lambda: ids[args.seed]))
            rows.append(probe(m, win, args, f"layer {args.layer} at {value:g}"))
            del m
    finally:
        wanda.owl_sparsity = owl_sparsity
    render(args, alloc, rows, [tok.decode(win[i][:2]) for i in args.windows])


@torch.no_grad()
def probe(model, win, args, label) -> dict:
    """Mean loss of every window, and per shown window its loss and first-position magnitudes."""
    model.eval()
    nll, shown = [], {}
    for i, w in enumerate(win):
        out = model(w[None], output_hidden_states=i in args.windows)
        loss = F.cross_entropy(out.logits[0, :-1].float(), w[1:]).item()
        nll.append(loss)
        if i in args.windows:
            # hidden_states[k] is decoder layer k-1's output (hidden_states[0]: the embeddings).
            shown[i] = {"nll": loss, "pos0": [float(h[0, 0].abs().max()) for h in out.hidden_states[1:args.depth + 1]]}
    print(label, f"ppl {math.exp(sum(nll) / len(nll)):.2f}", {i: round(s["nll"], 2) for i, s in shown.items()}, flush=True)
    return {"label": label, "ppl": math.exp(sum(nll) / len(nll)), "shown": shown}


def render(args, alloc, rows, starts) -> None:
    n = len(next(iter(alloc.values())))
    spread = [max(a[i] for a in alloc.values()) - min(a[i] for a in alloc.values()) for i in range(n)]
    head = "| decoder layer | " + " | ".join(f"draw {s}" for s in alloc) + " | spread |\n|---|" + "---|" * (len(alloc) + 1) + "\n"
    table1 = head + "\n".join(f"| {i} | " + " | ".join(f"{a[i]:.3f}" for a in alloc.values()) + f" | {spread[i]:.3f} |"
                              for i in range(n)) + "\n"
    cols = " | ".join(f"window {i} ('{s.strip()}...') loss; first-position max abs after layers 0-{args.depth - 1}"
                      for i, s in zip(args.windows, starts))
    table2 = (f"| model | wiki_eval ppl (8192 tokens) | {cols} |\n|---|---|" + "---|" * len(args.windows) + "\n" +
              "\n".join(f"| {r['label']} | {r['ppl']:.2f} | " + " | ".join(
                  f"{r['shown'][i]['nll']:.2f}; " + " / ".join(f"{v:.0f}" for v in r["shown"][i]["pos0"])
                  for i in args.windows) + " |" for r in rows) + "\n")
    md = (f"## OWL Wanda on {args.model}: the draws, and the first-position activation\n\n"
          f"`{invocation('diagnose_owl_sink.py')}` (one run; {machine()}). OWL's per-layer sparsity "
          f"(Wanda scores, M=10, lambda=0.08, mean 50%) from each calibration draw (32 x 512 tokens of "
          f"`wiki_calib`, the draws of `bench_prune.py --seeds`):\n\n" + table1 +
          f"\nWanda at 50% in every layer but layer {args.layer}, which takes the sparsity in the first column, on "
          f"draw {args.seed}; loss of each shown 512-token window of `wiki_eval` and the largest hidden-state "
          "magnitude at its first position after each of the first decoder layers (where Qwen2.5 builds its "
          "attention sink's massive activation):\n\n" + table2)
    print(md)
    write_section(args.section, md)


if __name__ == "__main__":
    main()
