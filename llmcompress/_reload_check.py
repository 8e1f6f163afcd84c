# Run by llmcompress in a fresh interpreter (python -c): loads a saved model with plain
# transformers, never importing llmcompress, and writes its logits for given token ids.
import sys

import torch
from transformers import AutoModelForCausalLM

model_dir, ids_path, out_path = sys.argv[1:4]
model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
ids = torch.load(ids_path)
with torch.no_grad():
    logits = model(ids.to(model.device)).logits.float().cpu()
assert "llmcompress" not in sys.modules, "the reload check must not import llmcompress"
torch.save(logits, out_path)
