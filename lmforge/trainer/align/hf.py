"""Glue between our spec and trl/transformers trainers: the shared TrainingArguments, a callback that
reports progress and mirrors checkpoints to the store, and the train-with-resume call.

The trainers write checkpoints to a local directory as usual; `on_save` uploads each one (rank 0) with
`CheckpointStore`, and a restarted run downloads the latest back and passes it to
`trainer.train(resume_from_checkpoint=…)`, which restores weights, optimizer, scheduler and RNG.

Under torchrun every rank of a node shares the work folder: each rank writes its own RNG file into
the local checkpoint, so all ranks meet at a barrier before rank 0 uploads it, and on a resume the
node's first process downloads the checkpoint while the others wait at a barrier.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from transformers import PrinterCallback, TrainerCallback

from lmforge.api.alignment import AlignmentJobSpec
from lmforge.api.training import Precision
from lmforge.trainer.align.base import on_gpu
from lmforge.trainer.align.checkpoints import CheckpointStore
from lmforge.trainer.context import StageContext
from lmforge.trainer.safe_load import weights_only_loads

METRIC_NAMES = {
    "loss": "loss",
    "rewards/margins": "reward_margin",
    "rewards/accuracies": "reward_accuracy",
    "rewards/chosen": "reward_chosen",
    "rewards/rejected": "reward_rejected",
    "margin": "reward_margin",
    "accuracy": "pairwise_accuracy",
    "eval_loss": "eval_loss",
    "eval_accuracy": "eval_pairwise_accuracy",
    "eval_rewards/margins": "eval_reward_margin",
    "eval_rewards/accuracies": "eval_reward_accuracy",
    "reward": "mean_reward",
    "reward_std": "reward_std",
    "kl": "kl",
    "completions/mean_length": "completion_length",
    "grad_norm": "grad_norm",
    "learning_rate": "lr",
}
"""trl/transformers log keys → the names LMForge reports (progress, result, Prometheus)."""


def is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def training_args(spec: AlignmentJobSpec, out_dir: Path, has_eval: bool) -> dict[str, Any]:
    """Keyword arguments shared by every trl config (they all extend TrainingArguments)."""
    t = spec.training
    gpu = on_gpu(spec)
    every = spec.checkpoint.every_steps
    kwargs: dict[str, Any] = {
        "output_dir": str(out_dir),
        "per_device_train_batch_size": t.micro_batch_size,
        "per_device_eval_batch_size": t.micro_batch_size,
        "gradient_accumulation_steps": t.gradient_accumulation_steps,
        "learning_rate": t.lr,
        "warmup_steps": t.warmup_ratio,  # transformers 5: a float < 1 is a ratio of the steps
        "lr_scheduler_type": "cosine",
        "num_train_epochs": t.epochs,
        "max_steps": t.max_steps or -1,
        "bf16": t.precision is Precision.BF16,
        "fp16": t.precision is Precision.FP16,
        "use_cpu": not gpu,
        "activation_checkpointing": t.gradient_checkpointing,
        "seed": t.seed,
        "report_to": "none",
        "logging_steps": 1,
        "save_strategy": "steps",
        "save_steps": every,
        "save_total_limit": 1,
        "eval_strategy": "steps" if has_eval else "no",
        "eval_steps": every,
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "dataloader_pin_memory": gpu,
        "remove_unused_columns": True,
    }
    if gpu and spec.deepspeed.zero_stage > 0:
        kwargs["deepspeed"] = deepspeed_config(spec)
    return kwargs


def deepspeed_config(spec: AlignmentJobSpec) -> dict[str, Any]:
    """A ZeRO config with "auto" fields the HF integration fills from the TrainingArguments."""
    ds = spec.deepspeed
    zero: dict[str, Any] = {"stage": ds.zero_stage}
    if ds.offload_optimizer.value != "none":
        zero["offload_optimizer"] = {"device": ds.offload_optimizer.value}
    if ds.offload_params.value != "none":
        zero["offload_param"] = {"device": ds.offload_params.value}
    config: dict[str, Any] = {
        "zero_optimization": zero,
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "train_batch_size": "auto",
        "gradient_clipping": "auto",
    }
    if ds.extra_config is not None:
        config.update(ds.extra_config.model_dump())
    return config


class StageCallback(TrainerCallback):
    """Progress records on every log, checkpoints to the store on every save."""

    def __init__(self, ctx: StageContext, checkpoints: CheckpointStore) -> None:
        self.ctx = ctx
        self.checkpoints = checkpoints
        self.metrics: dict[str, float] = {}
        self.first: dict[str, float] = {}
        """The first value each metric was reported with (to report improvement)."""
        self.resumed_from_step: int | None = None
        """The checkpoint step `train` resumed from; None when it started fresh."""

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        for key, value in (logs or {}).items():
            name = METRIC_NAMES.get(key)
            if name is not None and isinstance(value, int | float):
                self.metrics[name] = float(value)
                self.first.setdefault(name, float(value))
        if state.is_world_process_zero:
            self.ctx.reporter.progress(state.global_step, state.max_steps, metrics=dict(self.metrics))

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # Every rank has written its rng_state_<rank>.pth into the folder once all are here.
        _barrier(args)
        if state.is_world_process_zero:
            local = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if local.is_dir():
                self.checkpoints.save(local, state.global_step)


def _barrier(args: Any) -> None:
    """Wait for every rank (a no-op in one process)."""
    if args.world_size > 1:
        import torch.distributed as dist

        dist.barrier()


def restore(checkpoints: CheckpointStore, out_dir: Path, args: Any) -> tuple[Path, int] | None:
    """The latest checkpoint in `out_dir`: the node's first process downloads it, the others wait."""
    first = args.local_process_index == 0
    found = checkpoints.restore(out_dir) if first else None
    _barrier(args)
    return found if first else checkpoints.restore(out_dir, download=False)


def train(trainer: Any, ctx: StageContext, spec: AlignmentJobSpec, out_dir: Path) -> StageCallback:
    """Run `trainer` to the end, resuming from the store's latest checkpoint when there is one."""
    checkpoints = CheckpointStore(ctx.output, spec.checkpoint.keep_last, publish=is_main())
    callback = StageCallback(ctx, checkpoints)
    trainer.add_callback(callback)
    trainer.remove_callback(PrinterCallback)  # our progress records already carry the logs
    resume = restore(checkpoints, out_dir, trainer.args) if spec.checkpoint.resume else None
    if resume is not None:
        callback.resumed_from_step = resume[1]
        print(f"resuming from checkpoint at step {resume[1]}", flush=True)
    # Transformers loads its own files weights-only; under DeepSpeed (GPU) `load_checkpoint` asks
    # torch.load for pickle, which `weights_only_loads` overrides.
    with weights_only_loads(f"checkpoint {resume[0].name}") if resume else nullcontext():
        trainer.train(resume_from_checkpoint=str(resume[0]) if resume else None)
    return callback
