"""Logit distillation: a smaller student learns a larger teacher's next-token distribution.

Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network" (2015); reverse KL as in
MiniLLM (Gu et al., 2024); generalized JSD as in GKD (Agarwal et al., 2024). Prune-then-distill
follows Minitron (Sreenivas et al., 2024), and so does the optional teacher correction: the teacher
first fine-tunes on the distillation text, so that the student does not learn a distribution over
text unlike the one it trains on (Sreenivas et al., "LLM Pruning and Distillation in Practice: The
Minitron Approach", arXiv:2408.11796).

Recipe (the model being compressed is the student; the calibration section is the training text)::

    - method: distill
      teacher: qwen2.5-coder-1.5b     # any source the loader takes
      loss: forward_kl                # forward_kl | reverse_kl | jsd
      temperature: 2.0
      alpha: 0.5                      # weight of plain cross-entropy on the labels
      top_k: 64                       # >0: cache the teacher's top-k logits once, train offline
      # teacher_correction_steps: 100 # fine-tune the teacher on the training text first (Minitron)
      # hidden_weight: 1.0            # + decoder-layer outputs (students as wide as the teacher; top_k: 0)
      max_steps: 200
      learning_rate: 5.0e-5
      # lora_r: 16                    # train LoRA adapters instead (peft), merged into the output
      # qlora: true                   # ... on a frozen nf4 copy of the student (bitsandbytes)
    calibration: {source: wiki_calib, num_samples: 512, seq_len: 256}
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch

from ...config import check_choice, check_range
from ...distributed import gather_sharded, main_process_first, world_size
from ...errors import ConfigError
from ...modeling import count_parameters
from ...registry import MethodConfig, register_method
from .losses import LOSSES, layer_pairs

logger = logging.getLogger(__name__)
TEACHER_DTYPES = ("fast", "bfloat16", "float16", "float32", "int8", "nf4")
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class DistillConfig(MethodConfig):
    """Distillation (see module docstring)."""

    KIND: ClassVar[str] = "distilled"
    NEEDS_CALIBRATION: ClassVar[bool] = True
    TRAINS: ClassVar[bool] = True

    teacher: str = field(default="", metadata={"help": "teacher model: alias, directory, .gguf or hub id"})
    teacher_dtype: str = field(default="fast", metadata={"help": "teacher weights: fast (bfloat16 where the device computes it natively: CUDA, CPUs with AVX512 / AMX; float32 elsewhere) | bfloat16 | float16 | float32 | int8 | nf4 (bitsandbytes)"})
    loss: str = field(default="forward_kl", metadata={"help": "forward_kl | reverse_kl | jsd"})
    temperature: float = field(default=1.0, metadata={"help": "softmax temperature of both models (loss scaled by T^2)"})
    beta: float = field(default=0.5, metadata={"help": "jsd: weight of the teacher in the mixture"})
    alpha: float = field(default=0.0, metadata={"help": "weight of cross-entropy on the labels; 1 - alpha on the distillation loss"})
    top_k: int = field(default=0, metadata={"help": ">0: train from a cache of the teacher's top-k logits (teacher freed); 0: teacher in the loop"})
    cache_dir: str = field(default="", metadata={"help": "where the logit cache lives (default: ~/.cache/llmcompress/distill/KEY)"})
    hidden_weight: float = field(default=0.0, metadata={"help": ">0: also match the teacher's decoder-layer outputs (relative squared error, this weight); needs the teacher in the loop (top_k: 0) and the same hidden size"})
    chunk_size: int = field(default=256, metadata={"help": "tokens per chunk of the loss (bounds its float32 memory)"})
    max_steps: int = field(default=100, metadata={"help": "optimizer steps"})
    learning_rate: float = field(default=5e-5, metadata={"help": "peak learning rate (AdamW)"})
    lr_scheduler: str = field(default="cosine", metadata={"help": "transformers scheduler name: cosine | linear | constant | ..."})
    warmup_steps: int = field(default=0, metadata={"help": "linear warm-up steps"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    batch_size: int = field(default=4, metadata={"help": "sequences per device per step"})
    grad_accum: int = field(default=1, metadata={"help": "gradient accumulation steps"})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "recompute activations in the backward pass"})
    mixed_precision: str = field(default="auto", metadata={"help": "auto (bf16 on CUDA) | bf16 | fp16 | no"})
    save_steps: int = field(default=0, metadata={"help": "checkpoint every N steps (0: none)"})
    checkpoint_dir: str = field(default="", metadata={"help": "where checkpoints go (default: OUTPUT.checkpoints next to the output, or a temp dir)"})
    resume: bool = field(default=False, metadata={"help": "continue from the latest checkpoint in checkpoint_dir"})
    lora_r: int = field(default=0, metadata={"help": ">0: train LoRA adapters of this rank (peft), merged into the output"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling"})
    qlora: bool = field(default=False, metadata={"help": "LoRA on a frozen nf4 (bitsandbytes) copy of the student (QLoRA); the output is the dequantized base plus the merged adapters"})
    teacher_correction_steps: int = field(default=0, metadata={"help": ">0: first fine-tune the teacher this many steps with cross-entropy on the training text, then distill from the corrected teacher (Minitron's teacher correction); with top_k the cache holds the corrected teacher"})
    teacher_correction_lr: float = field(default=0.0, metadata={"help": "peak learning rate of the teacher correction (0: learning_rate); its other settings (batch, schedule, precision, seed) are the student's"})
    seed: int = field(default=0, metadata={"help": "data order and initialisation seed"})
    logging_steps: int = field(default=10, metadata={"help": "log the loss every N steps"})

    def __post_init__(self):
        if not self.teacher:
            raise ConfigError("distill needs a 'teacher' model (alias, directory or hub id)", "teacher")
        check_choice("loss", self.loss, LOSSES)
        check_choice("teacher_dtype", self.teacher_dtype, TEACHER_DTYPES)
        check_choice("mixed_precision", self.mixed_precision, ("auto", "bf16", "fp16", "no"))
        check_range("temperature", self.temperature, 0, lo_open=True)
        check_range("beta", self.beta, 0, 1)
        check_range("alpha", self.alpha, 0, 1)
        check_range("top_k", self.top_k, 0)
        check_range("hidden_weight", self.hidden_weight, 0)
        if self.hidden_weight and self.top_k:
            raise ConfigError("hidden_weight matches the teacher's decoder-layer outputs, which the top-k logit cache "
                              "does not hold: set top_k: 0 (teacher in the loop) or hidden_weight: 0", "hidden_weight")
        for key in ("max_steps", "batch_size", "grad_accum", "chunk_size", "logging_steps"):
            check_range(key, getattr(self, key), 1)
        check_range("learning_rate", self.learning_rate, 0, lo_open=True)
        if self.qlora and not self.lora_r:
            raise ConfigError("qlora trains LoRA adapters on a 4-bit base: set lora_r (e.g. 16)", "qlora")
        if self.resume and not self.save_steps:
            raise ConfigError("resume needs checkpoints: set save_steps (and the same checkpoint_dir)", "resume")
        self.check_teacher_correction()

    def check_teacher_correction(self) -> None:
        check_range("teacher_correction_steps", self.teacher_correction_steps, 0)
        check_range("teacher_correction_lr", self.teacher_correction_lr, 0)
        if not self.teacher_correction_steps:
            return
        if self.teacher_dtype in ("int8", "nf4"):
            raise ConfigError(f"teacher correction fine-tunes every weight of the teacher, which a bitsandbytes "
                              f"{self.teacher_dtype} teacher cannot train: set teacher_dtype to fast, bfloat16 or "
                              "float32, or teacher_correction_steps: 0", "teacher_correction_steps")
        if self.alpha == 1 and not self.hidden_weight:
            raise ConfigError("teacher_correction_steps corrects a teacher that this stage never reads (alpha 1: "
                              "cross-entropy alone): set alpha below 1, or teacher_correction_steps: 0",
                              "teacher_correction_steps")

    def check_launch(self, sharding: str | None) -> None:
        if self.teacher_correction_steps and world_size() > 1:
            raise ConfigError("teacher correction runs in one process (each launched process would train its own "
                              "teacher): run this stage without a launcher, or set teacher_correction_steps: 0",
                              "teacher_correction_steps")
        if sharding and (self.lora_r or self.qlora):
            raise ConfigError(f"LoRA / QLoRA students are not supported under {sharding} (peft adapters on a sharded, "
                              "partly frozen model): launch data-parallel (`accelerate launch --multi_gpu`), "
                              "which LoRA's small trainable set suits", "lora_r")

    def check_model(self, config, source=None) -> None:
        from ... import models

        teacher_src = models.resolve(self.teacher)
        teacher_cfg = models.load_config(teacher_src)
        if teacher_cfg is not None:
            check_vocab(config, teacher_cfg, self.teacher, _tokenizer_of(source), _tokenizer_of(teacher_src))
            if self.hidden_weight:
                check_widths(config, teacher_cfg, self.teacher)


def check_widths(student_cfg, teacher_cfg, teacher: str) -> None:
    """The intermediate-state loss compares hidden states element by element: same hidden size."""
    sh, th = getattr(student_cfg, "hidden_size", None), getattr(teacher_cfg, "hidden_size", None)
    if sh != th:
        raise ConfigError(f"hidden_weight compares decoder-layer outputs, but the student's hidden size is {sh} and "
                          f"teacher '{teacher}''s {th}: use it for students as wide as the teacher (a structurally "
                          "pruned copy of it), or set hidden_weight: 0", "hidden_weight")


def _checkpointing_arg() -> str:
    """TrainingArguments' name for activation recomputation: ``activation_checkpointing`` where
    transformers has it (5.24; ``gradient_checkpointing`` is there a deprecated alias that warns on
    every run), else ``gradient_checkpointing`` (5.17)."""
    import dataclasses

    from transformers import TrainingArguments

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    return "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"


def _tokenizer_of(source):
    """The tokenizer of a local model directory (no weights), or None when not readable cheaply."""
    if source is None or getattr(source, "path", None) is None or source.kind not in ("dir", "alias"):
        return None
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(source.path)
    except Exception:  # the full load later reports tokenizer problems with context
        return None


def check_vocab(student_cfg, teacher_cfg, teacher: str, student_tok=None, teacher_tok=None) -> None:
    """Refuse teacher/student pairs whose token ids do not mean the same thing."""
    sv, tv = student_cfg.vocab_size, teacher_cfg.vocab_size
    problems = []
    if student_tok is not None and teacher_tok is not None:
        a, b = student_tok.get_vocab(), teacher_tok.get_vocab()
        if a != b:
            only_s = sorted(set(a) - set(b))[:3]
            only_t = sorted(set(b) - set(a))[:3]
            moved = [t for t in set(a) & set(b) if a[t] != b[t]][:3]
            problems.append(f"tokenizers differ ({len(a)} vs {len(b)} tokens; only in the student: {only_s}, "
                            f"only in the teacher: {only_t}, different ids: {moved})")
    if not problems and sv != tv:
        # Padded embedding tables are fine when the tokenizers agree (Qwen2.5 0.5B vs 1.5B).
        if student_tok is None:
            return
        if max(student_tok.get_vocab().values()) >= min(sv, tv):
            problems.append(f"vocab_size {sv} (student) vs {tv} (teacher)")
    if problems:
        raise ConfigError(f"teacher '{teacher}' and the student do not share a vocabulary: {'; '.join(problems)}. "
                          "Distillation compares next-token distributions token by token: pick a teacher "
                          "from the student's family (same tokenizer).", "teacher")


def resolve_teacher_dtype(name: str, device) -> str:
    """``teacher_dtype`` with ``fast`` resolved: bfloat16 where ``device`` computes it natively, else
    float32 (an AVX2-only CPU emulates bf16 matmuls, about 6x slower than float32; see
    ``calibration.native_bf16``)."""
    from ...calibration import fast_dtype

    if name != "fast":
        return name
    return "bfloat16" if fast_dtype(device, "teacher", "teacher_dtype") == torch.bfloat16 else "float32"


def _load_teacher(cfg: DistillConfig, device):
    from ... import models

    kwargs = {}
    resolved = dtype = resolve_teacher_dtype(cfg.teacher_dtype, device)
    if dtype in ("int8", "nf4"):
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = (BitsAndBytesConfig(load_in_8bit=True) if dtype == "int8" else
                                         BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                            bnb_4bit_compute_dtype=torch.bfloat16))
        dtype = "bfloat16"
        if device.type != "cpu":
            kwargs["device_map"] = str(device)
    teacher, tok, source = models.load(cfg.teacher, dtype=dtype, **kwargs)
    if "device_map" not in kwargs and "quantization_config" not in kwargs:
        teacher.to(device)
    teacher.eval().requires_grad_(False)
    return teacher, tok, source, resolved


def _precision(cfg: DistillConfig, device) -> dict:
    mp = cfg.mixed_precision
    if mp == "auto":
        mp = "bf16" if device.type == "cuda" else "no"
    return {"bf16": mp == "bf16", "fp16": mp == "fp16"}


def _training_args(cfg: DistillConfig, device, out_dir: str, *, max_steps: int, learning_rate: float,
                   save_steps: int = 0):
    """transformers ``TrainingArguments`` of the stage, for the student or the teacher correction."""
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=out_dir, max_steps=max_steps, learning_rate=learning_rate,
        lr_scheduler_type=cfg.lr_scheduler, warmup_steps=cfg.warmup_steps, weight_decay=cfg.weight_decay,
        per_device_train_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
        **{_checkpointing_arg(): cfg.gradient_checkpointing}, logging_steps=cfg.logging_steps,
        save_strategy="steps" if save_steps else "no", save_steps=save_steps or 500, save_total_limit=2,
        seed=cfg.seed, data_seed=cfg.seed, report_to=[], remove_unused_columns=False, dataloader_num_workers=0,
        use_cpu=device.type == "cpu", disable_tqdm=False, **_precision(cfg, device))


def correction_tag(cfg: DistillConfig) -> str:
    """What a corrected teacher depends on beyond its weights and the token windows (for the cache key)."""
    if not cfg.teacher_correction_steps:
        return ""
    return (f"+corrected(steps={cfg.teacher_correction_steps},lr={cfg.teacher_correction_lr or cfg.learning_rate},"
            f"batch={cfg.batch_size}x{cfg.grad_accum},{cfg.lr_scheduler},warmup={cfg.warmup_steps},"
            f"wd={cfg.weight_decay},mp={cfg.mixed_precision},seed={cfg.seed})")


def correct_teacher(teacher, ids: torch.Tensor, cfg: DistillConfig, device):
    """Teacher correction (Sreenivas et al., 2024, arXiv:2408.11796): fine-tune the teacher with
    cross-entropy on the distillation windows before it teaches, in float32 (AdamW on bf16
    weights loses small updates), then back to its dtype, frozen. Same Trainer as the student.
    Returns the corrected teacher and what to note."""
    import shutil
    import tempfile

    from .trainer import DistillTrainer, TokenWindows, collate

    dtype = next(teacher.parameters()).dtype
    teacher.float().train().requires_grad_(True)
    lr = cfg.teacher_correction_lr or cfg.learning_rate
    logger.info("teacher correction: %d steps of cross-entropy on the training text (lr %g)",
                cfg.teacher_correction_steps, lr)
    out_dir = tempfile.mkdtemp(prefix="llmcompress-teacher-")
    try:
        trainer = DistillTrainer(model=teacher, args=_training_args(cfg, device, out_dir, max_steps=cfg.teacher_correction_steps,
                                                                    learning_rate=lr),
                                 train_dataset=TokenWindows(ids), data_collator=collate, alpha=1.0,
                                 chunk_size=cfg.chunk_size)
        t0 = time.perf_counter()
        result = trainer.train()
        seconds = time.perf_counter() - t0
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    teacher = trainer.accelerator.unwrap_model(teacher, keep_fp32_wrapper=False)
    teacher.to(dtype).eval().requires_grad_(False)
    return teacher, {"steps": trainer.state.global_step, "learning_rate": lr, "train_loss": result.training_loss,
                     "seconds": round(seconds, 1)}


@register_method("distill", DistillConfig)
def apply_distill(model, cfg: DistillConfig, ctx):
    """Train ``model`` (the student) on the teacher's distribution; returns the trained model."""
    import shutil
    import tempfile

    from transformers import set_seed

    from .cache import TopKCache, build_cache, cache_key
    from .trainer import DistillTrainer, TokenWindows, collate
    from ...models import cache_dir

    if world_size() > 1 and cfg.save_steps and not cfg.checkpoint_dir:
        raise ConfigError("with several processes, checkpoints need one folder they all reach: set checkpoint_dir",
                          "checkpoint_dir")
    device = ctx.device
    ids = ctx.calibration_ids()
    teacher, teacher_tok, teacher_src, teacher_dtype = _load_teacher(cfg, device)
    check_vocab(model.config, teacher.config, cfg.teacher, ctx.tokenizer, teacher_tok)
    pairs = None
    if cfg.hidden_weight:
        check_widths(model.config, teacher.config, cfg.teacher)
        pairs = layer_pairs(model.config.num_hidden_layers, teacher.config.num_hidden_layers)
    n_student, n_teacher = count_parameters(model), count_parameters(teacher)
    if n_student > n_teacher:
        raise ConfigError(f"the student ({n_student:,} parameters) is larger than the teacher '{cfg.teacher}' "
                          f"({n_teacher:,}): distillation compresses into a smaller model; swap them or pick a "
                          "larger teacher", "teacher")
    notes = {"teacher": teacher_src.base_model, "teacher_dtype": teacher_dtype, "teacher_parameters": n_teacher, "student_parameters": n_student,
             "samples": len(ids), "seq_len": ids.shape[1], "data": ctx.notes.get("calibration_source", "calibration text"),
             "loss": cfg.loss, "temperature": cfg.temperature,
             "alpha": cfg.alpha, "top_k": cfg.top_k, **({"hidden_weight": cfg.hidden_weight} if pairs else {})}
    # a corrected teacher is another teacher: its cache is keyed and named apart
    teacher_name = teacher_src.base_model + correction_tag(cfg)

    cache = None
    if cfg.alpha == 1 and not cfg.hidden_weight:
        # cross-entropy alone (the baseline runs): the teacher's logits are never read, so no cache
        # is built and the teacher, loaded for the checks above, is freed
        del teacher
        teacher = None
    elif cfg.top_k:
        folder = Path(cfg.cache_dir or cache_dir() / "distill" / cache_key(teacher_name, ids, cfg.top_k,
                                                                            cfg.temperature, teacher_dtype))
        with main_process_first():  # several processes: the main one builds, the others read
            if not (folder / "index.json").exists():
                if cfg.teacher_correction_steps:  # one process only (check_launch)
                    teacher, notes["teacher_correction"] = correct_teacher(teacher, ids, cfg, device)
                logger.info("building the teacher's top-%d logit cache in %s", cfg.top_k, folder)
                t0 = time.perf_counter()
                build_cache(teacher, ids, folder, cfg.top_k, temperature=cfg.temperature,
                            teacher_name=teacher_name, device=device)
                notes["cache_seconds"] = round(time.perf_counter() - t0, 1)
            elif cfg.teacher_correction_steps:
                notes["teacher_correction"] = {"steps": cfg.teacher_correction_steps, "cached": True}
        cache = TopKCache(folder)
        if len(cache) != len(ids) or not torch.equal(cache.input_ids(), ids.long()):
            raise ConfigError(f"the logit cache in {folder} was built from other token windows: delete it or "
                              "point cache_dir elsewhere", "cache_dir")
        if cache.teacher and cache.teacher != teacher_name:
            raise ConfigError(f"the logit cache in {folder} holds the logits of teacher '{cache.teacher}', this stage's "
                              f"is '{teacher_name}': delete it or point cache_dir elsewhere", "cache_dir")
        if cache.k != cfg.top_k or cache.temperature != cfg.temperature:
            raise ConfigError(f"the logit cache in {folder} holds top-{cache.k} at temperature {cache.temperature}, "
                              f"this stage asks for top-{cfg.top_k} at {cfg.temperature}: delete it or point cache_dir "
                              "elsewhere", "cache_dir")
        notes["cache_dir"] = str(folder)
        del teacher  # offline: the teacher is not needed any more
        teacher = None
        if device.type == "cuda":
            torch.cuda.empty_cache()
    elif cfg.teacher_correction_steps:
        teacher, notes["teacher_correction"] = correct_teacher(teacher, ids, cfg, device)

    set_seed(cfg.seed)
    student = model
    if cfg.qlora:
        from .qlora import qlora_student

        student = qlora_student(model, cfg.lora_r, cfg.lora_alpha, LORA_TARGETS, cfg.gradient_checkpointing)
    elif cfg.lora_r:
        from peft import LoraConfig, get_peft_model

        student = get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, task_type="CAUSAL_LM",
                                                   target_modules=LORA_TARGETS))
    student.train()
    # under FSDP the student is sharded in place; the gathered weights go into a new instance
    student_cls, student_dtype = type(student), next(student.parameters()).dtype
    # Trainer needs an output_dir even when nothing is saved; a temp folder made only for that
    # is removed after training so that runs do not leave empty folders behind.
    scratch = not cfg.checkpoint_dir
    out_dir = cfg.checkpoint_dir or tempfile.mkdtemp(prefix="llmcompress-distill-")
    args = _training_args(cfg, device, out_dir, max_steps=cfg.max_steps, learning_rate=cfg.learning_rate,
                          save_steps=cfg.save_steps)
    trainer = DistillTrainer(model=student, args=args, train_dataset=TokenWindows(ids), data_collator=collate,
                             teacher=teacher, cache=cache, loss=cfg.loss, temperature=cfg.temperature, beta=cfg.beta,
                             alpha=cfg.alpha, chunk_size=cfg.chunk_size, hidden_weight=cfg.hidden_weight,
                             layer_pairs=pairs, callbacks=list(ctx.callbacks))
    resume = None
    if cfg.resume:
        from transformers.trainer_utils import get_last_checkpoint

        resume = get_last_checkpoint(out_dir) if os.path.isdir(out_dir) else None
        if resume is None:
            logger.warning("resume: no checkpoint in %s, starting from step 0", out_dir)
    t0 = time.perf_counter()
    try:
        result = trainer.train(resume_from_checkpoint=resume)
    finally:
        if scratch and not cfg.save_steps:
            shutil.rmtree(out_dir, ignore_errors=True)
    notes.update({"steps": trainer.state.global_step, "train_seconds": round(time.perf_counter() - t0, 1),
                  "train_loss": result.training_loss,
                  "processes": world_size(),
                  "tokens": trainer.state.global_step * cfg.batch_size * cfg.grad_accum * world_size() * ids.shape[1],
                  "log": [{k: v for k, v in h.items() if k in ("step", "loss", "learning_rate")}
                          for h in trainer.state.log_history if "loss" in h],
                  "checkpoint_dir": out_dir if (cfg.save_steps or not scratch) else None,
                  "resumed_from": resume})
    ctx.notes["distill"] = notes
    if trainer.is_fsdp_enabled:
        # each process holds a shard: gather the full weights into a plain model on the main one
        student = gather_sharded(trainer, student_cls, student_dtype)
        if student is None:  # another process: nothing follows training under FSDP (check_launch)
            return model
        notes["sharding"] = "FSDP"
    else:
        # Mixed precision: accelerate wrapped the model's forward in autocast; give back the plain one,
        # or the returned model would keep computing in bf16 (and differ from its own checkpoint).
        student = trainer.accelerator.unwrap_model(student, keep_fp32_wrapper=False)
        if cfg.qlora:  # LoRA / QLoRA are refused under FSDP (DistillConfig.check_launch)
            from .qlora import merge_into

            student = merge_into(model, student)
        elif cfg.lora_r:
            student = student.merge_and_unload()
    student.eval()
    return student
