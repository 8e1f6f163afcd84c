"""Training through transformers' ``Trainer``: mixed precision, gradient accumulation, gradient
checkpointing, checkpoints every N steps and resume, and multi-GPU under ``accelerate launch``
(DDP / FSDP) come from it; this module only supplies the data and the loss."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset
from transformers import Trainer

from .losses import hidden_state_loss, shift_for_next_token, token_losses


class TokenWindows(Dataset):
    """Fixed-length token windows; each item carries its index, which addresses the logit cache."""

    def __init__(self, ids: torch.Tensor):
        self.ids = ids

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "sample_idx": torch.tensor(i)}


def collate(items: list[dict]) -> dict:
    ids = torch.stack([it["input_ids"] for it in items])
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "sample_idx": torch.stack([it["sample_idx"] for it in items])}


class DistillTrainer(Trainer):
    """``Trainer`` whose loss is ``alpha * CE + (1 - alpha) * KD`` against a teacher in memory
    (online) or its top-k logit cache (offline), plus ``hidden_weight`` times the intermediate-state
    loss over ``layer_pairs`` (online only)."""

    def __init__(self, *args, teacher=None, cache=None, loss: str = "forward_kl", temperature: float = 1.0,
                 beta: float = 0.5, alpha: float = 0.0, chunk_size: int = 256, hidden_weight: float = 0.0,
                 layer_pairs=None, **kwargs):
        super().__init__(*args, **kwargs)
        if (teacher is None) == (cache is None) and (alpha < 1 or hidden_weight > 0):
            raise ValueError("give a teacher or a logit cache (not both)")
        if hidden_weight > 0 and (teacher is None or not layer_pairs):
            raise ValueError("the intermediate-state loss needs the teacher in memory and layer_pairs")
        self.teacher, self.cache = teacher, cache
        self.kd = dict(kind=loss, temperature=temperature, beta=beta, chunk_size=chunk_size)
        self.alpha = alpha
        self.hidden_weight, self.layer_pairs = hidden_weight, layer_pairs

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        idx = inputs.pop("sample_idx")
        ids, am = inputs["input_ids"], inputs["attention_mask"]
        hidden = self.hidden_weight > 0
        out = model(input_ids=ids, attention_mask=am, use_cache=False, output_hidden_states=hidden)
        logits, labels, mask = shift_for_next_token(out.logits, ids, am)
        t_logits = t_idx = t_tail = t_out = None
        if self.cache is not None and self.alpha < 1:
            rows = [self.cache[int(i)] for i in idx.tolist()]
            t_logits = torch.stack([r[1] for r in rows]).to(logits.device)[:, :-1]
            t_idx = torch.stack([r[2] for r in rows]).to(logits.device)[:, :-1]
            t_tail = torch.stack([r[3] for r in rows]).to(logits.device)[:, :-1]
        elif self.teacher is not None and (self.alpha < 1 or hidden):
            with torch.no_grad():
                t_out = self.teacher(input_ids=ids.to(self.teacher.device), attention_mask=am.to(self.teacher.device),
                                     use_cache=False, output_hidden_states=hidden)
            t_logits = t_out.logits[:, :-1].to(logits.device) if self.alpha < 1 else None
        # one pass over the tokens: alpha * CE + (1 - alpha) * KD, gradients chunk by chunk
        # training reads the logits no more after the loss: their memory takes the gradient
        loss = token_losses(logits, t_logits=t_logits, t_indices=t_idx, t_tail=t_tail, labels=labels, mask=mask,
                            alpha=self.alpha, reuse_logits=not return_outputs, **self.kd)
        if hidden:
            loss = loss + self.hidden_weight * hidden_state_loss(out.hidden_states, t_out.hidden_states,
                                                                 self.layer_pairs, am)
        return (loss, out) if return_outputs else loss
