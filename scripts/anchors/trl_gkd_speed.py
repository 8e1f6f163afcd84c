"""Training throughput of TRL's GKDTrainer (off-policy: lmbda=0, generalized JSD with beta 0.5,
teacher in the loop) on the pruned-student setup of bench_distill.py, for that script's
``--trl-anchor`` section. Prints one JSON line.

Usage: PYTHONPATH=.dev/trl_site python trl_gkd_speed.py STUDENT_DIR TEACHER_DIR STEPS BATCH SEQ_LEN
(trl is installed apart: ``pip install --no-deps --target .dev/trl_site trl==1.16.0``; it imports
with this project's transformers / accelerate / datasets.)
"""

import json
import sys
import tempfile
import time

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl.experimental.gkd import GKDConfig, GKDTrainer

student_dir, teacher_dir, steps, batch, seq_len = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
ids = torch.load(f"{student_dir}/train_ids.pt")
tok = AutoTokenizer.from_pretrained(student_dir)
student = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32)
teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32)
data = Dataset.from_dict({"input_ids": ids.tolist()})


def collate(items):
    x = torch.tensor([it["input_ids"] for it in items])
    return {"input_ids": x, "attention_mask": torch.ones_like(x), "labels": x.clone()}


args = GKDConfig(output_dir=tempfile.mkdtemp(), max_steps=steps, per_device_train_batch_size=batch, learning_rate=1e-4,
                 lr_scheduler_type="cosine", lmbda=0.0, beta=0.5, temperature=1.0, bf16=True, use_cpu=True,
                 report_to=[], logging_steps=max(1, steps // 4), save_strategy="no", max_length=seq_len,
                 remove_unused_columns=False, dataloader_num_workers=0, seed=0)
trainer = GKDTrainer(model=student, teacher_model=teacher, args=args, train_dataset=data, data_collator=collate,
                     processing_class=tok)
t0 = time.perf_counter()
trainer.train()
seconds = time.perf_counter() - t0
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(json.dumps({"seconds": seconds, "tokens": steps * batch * seq_len, "peak_rss_mb": hwm / 1024}))
