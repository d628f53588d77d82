"""The DeepSpeed config generated from a `PretrainJobSpec`, and the run's derived sizes.

The optimizer and LR scheduler are built by us (parameter groups without weight decay on norms; a
LambdaLR schedule) and handed to `deepspeed.initialize`, so the config only carries engine settings:
batch sizes, precision, ZeRO, clipping. `deepspeed.extraConfig` is merged over it last.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lmforge.api.pretrain import PretrainJobSpec
from lmforge.api.training import OffloadDevice, Precision


@dataclass(frozen=True)
class RunShape:
    """Sizes every rank agrees on."""

    world: int
    micro_batch: int
    accumulation: int
    seq_length: int
    total_steps: int

    @property
    def global_batch(self) -> int:
        """Sequences per optimizer step over all ranks."""
        return self.micro_batch * self.accumulation * self.world

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch * self.seq_length


def run_shape(spec: PretrainJobSpec, world: int, seq_length: int) -> RunShape:
    """Steps from `maxSteps`, or from the token budget rounded up to whole steps."""
    t = spec.training
    global_batch = t.micro_batch_size * t.gradient_accumulation_steps * world
    if t.max_steps is not None:
        steps = t.max_steps
    else:
        assert t.tokens is not None  # the model validator guarantees exactly one
        steps = max(1, -(-t.tokens // (global_batch * seq_length)))
    return RunShape(world, t.micro_batch_size, t.gradient_accumulation_steps, seq_length, steps)


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def deepspeed_config(spec: PretrainJobSpec, shape: RunShape) -> dict[str, Any]:
    """The DeepSpeed JSON config (printed at start and stored with checkpoints and the model)."""
    t, ds = spec.training, spec.deepspeed
    zero: dict[str, Any] = {"stage": ds.zero_stage}
    if ds.zero_stage >= 1:
        zero.update(overlap_comm=False, contiguous_gradients=True)
    if ds.offload_optimizer is not OffloadDevice.NONE:
        zero["offload_optimizer"] = {"device": ds.offload_optimizer.value}
    if ds.offload_params is not OffloadDevice.NONE:
        zero["offload_param"] = {"device": ds.offload_params.value}
    if ds.zero_stage == 3:
        # Gather 16-bit weights on save so the engine can hand us a full state dict for export.
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": shape.micro_batch,
        "gradient_accumulation_steps": shape.accumulation,
        "train_batch_size": shape.global_batch,
        "gradient_clipping": t.gradient_clipping,
        "zero_optimization": zero,
        "bf16": {"enabled": t.precision is Precision.BF16},
        "fp16": {"enabled": t.precision is Precision.FP16, "initial_scale_power": 16},
        "steps_per_print": 10**9,  # progress comes from our reporter, not DeepSpeed's prints
        "wall_clock_breakdown": False,
        "zero_allow_untested_optimizer": True,
    }
    if ds.extra_config is not None:
        config = _merge(config, ds.extra_config.model_dump())
    return config
