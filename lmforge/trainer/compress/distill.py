"""Knowledge distillation: train a smaller student on the teacher's logits over a Dataset's shards.

loss = alpha · T² · KL(softmax(teacher / T) ‖ softmax(student / T)) + (1 − alpha) · CE(student, next token)

The T² factor keeps the soft-target gradients on the scale of the hard-label ones (Hinton et al.).
alpha = 0 is plain training on the data, which is what the tests compare against.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmforge.api.release import Distillation
from lmforge.trainer.compress.data import default_device
from lmforge.trainer.compress.report import nll_per_token
from lmforge.trainer.errors import InvalidInput
from lmforge.trainer.shards import Shards
from lmforge.trainer.turns import write_generation_config

EVAL_ROWS = 64
"""Validation rows scored at the end."""


@dataclass
class DistillResult:
    student_dir: Path
    train_loss: float
    """Mean combined loss over the last 10% of steps."""
    val_nll: float
    """Student's held-out next-token NLL (nats per token)."""
    parameters: int


def distill(
    teacher_dir: Path,
    cfg: Distillation,
    shards: Shards,
    out_dir: Path,
    *,
    seed: int = 0,
    on_step: Callable[[int, float], object] | None = None,
    device: str | None = None,
) -> DistillResult:
    """Train `cfg.student` from scratch against the teacher at `teacher_dir` on `device` (default: the GPU
    when torch sees one, else the CPU); save it in HF format. One process: the stage runs one."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoTokenizer

    from lmforge.trainer.models import build_model, llama_config, load_model

    where = torch.device(device or default_device())
    teacher = load_model(str(teacher_dir)).eval().to(where)
    vocab = teacher.config.vocab_size
    config = llama_config(
        cfg.student,
        vocab_size=vocab,
        context_length=shards.seq_length,
        bos_token_id=teacher.config.bos_token_id,
        eos_token_id=teacher.config.eos_token_id,
        pad_token_id=teacher.config.pad_token_id,
    )
    student = build_model(config, seed)
    student.to(where)  # type: ignore[arg-type]  # transformers' stubs type `to` for dtypes only
    if len(shards.train) == 0:
        raise InvalidInput("compression.distillation.datasetRef: the Dataset has no train rows")
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=0.0)
    warmup = max(1, cfg.max_steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, cfg.max_steps) / cfg.max_steps)),
    )
    rng = np.random.default_rng(seed)
    t = cfg.temperature
    tail: list[float] = []
    student.train()
    for step in range(cfg.max_steps):
        ids = torch.from_numpy(shards.train.sample(rng, cfg.micro_batch_size)).to(where)  # (B, L)
        if int(ids.max()) >= vocab:
            raise InvalidInput(
                f"token id {int(ids.max())} is outside the teacher's vocabulary ({vocab}): "
                "distillation.datasetRef must use the teacher's tokenizer"
            )
        with torch.no_grad():
            t_logits = teacher(input_ids=ids).logits[:, :-1].float()  # (B, L-1, V)
        s_logits = student(input_ids=ids).logits[:, :-1].float()  # (B, L-1, V)
        flat_s = s_logits.reshape(-1, vocab)
        hard = F.cross_entropy(flat_s, ids[:, 1:].reshape(-1))
        soft = (
            F.kl_div(
                F.log_softmax(flat_s / t, -1),
                F.log_softmax(t_logits.reshape(-1, vocab) / t, -1),
                log_target=True,
                reduction="batchmean",
            )
            * t
            * t
        )
        loss = cfg.alpha * soft + (1 - cfg.alpha) * hard
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        sched.step()
        value = float(loss.detach())
        if step >= cfg.max_steps * 0.9:
            tail.append(value)
        if on_step:
            on_step(step + 1, value)
    val_nll = nll_per_token(student, shards.validation.head(EVAL_ROWS))
    student.config.use_cache = True
    student.to("cpu")  # type: ignore[arg-type]
    out_dir.mkdir(parents=True, exist_ok=True)
    student.save_pretrained(out_dir, safe_serialization=True)
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    tokenizer.save_pretrained(out_dir)
    write_generation_config(out_dir, tokenizer)
    return DistillResult(
        out_dir, float(np.mean(tail)) if tail else float("nan"), val_nll, sum(p.numel() for p in student.parameters())
    )
