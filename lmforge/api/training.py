"""Training settings shared by `PretrainJob` and `AlignmentJob`: precision, optimizer, schedule,
DeepSpeed, checkpoints and the nodes × GPUs topology."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field, model_validator

from lmforge.api.meta import ApiModel, FreeForm, Rule


class Precision(StrEnum):
    BF16 = "bf16"
    FP16 = "fp16"
    FP32 = "fp32"


class LRSchedule(StrEnum):
    COSINE = "cosine"
    LINEAR = "linear"
    CONSTANT = "constant"


class Optimizer(ApiModel):
    """AdamW with warm-up then decay to a floor."""

    rules = (Rule("self.minLr <= self.lr", "minLr must not exceed lr", "minLr"),)

    lr: float = Field(default=3e-4, gt=0, le=1)
    """Peak learning rate."""
    min_lr: float = Field(default=3e-5, ge=0)
    """Floor the schedule decays to."""
    weight_decay: float = Field(default=0.1, ge=0, le=1)
    """AdamW decoupled weight decay (not applied to norms and biases)."""
    beta1: float = Field(default=0.9, ge=0, lt=1)
    """Adam β1."""
    beta2: float = Field(default=0.95, ge=0, lt=1)
    """Adam β2."""
    eps: float = Field(default=1e-8, gt=0)
    """Adam ε."""
    warmup_steps: int = Field(default=100, ge=0)
    """Linear warm-up steps from 0 to `lr`."""
    schedule: LRSchedule = LRSchedule.COSINE
    """Decay after warm-up."""

    @model_validator(mode="after")
    def _floor(self) -> Optimizer:
        if self.min_lr > self.lr:
            raise ValueError(f"minLr ({self.min_lr}) must not exceed lr ({self.lr})")
        return self


class OffloadDevice(StrEnum):
    NONE = "none"
    CPU = "cpu"


class DeepSpeed(ApiModel):
    """DeepSpeed engine settings; the generated config is published with the job's artifacts."""

    rules = (
        Rule("self.offloadParams == 'none' || self.zeroStage == 3", "offloadParams needs zeroStage 3", "offloadParams"),
        Rule(
            "self.offloadOptimizer == 'none' || self.zeroStage >= 1",
            "offloadOptimizer needs zeroStage ≥ 1",
            "offloadOptimizer",
        ),
    )

    zero_stage: int = Field(default=1, ge=0, le=3)
    """ZeRO stage: 0 off, 1 optimizer state, 2 + gradients, 3 + parameters partitioned."""
    offload_optimizer: OffloadDevice = OffloadDevice.NONE
    """Offload optimizer state (ZeRO ≥ 1)."""
    offload_params: OffloadDevice = OffloadDevice.NONE
    """Offload parameters (ZeRO 3 only)."""
    extra_config: FreeForm | None = None
    """Extra DeepSpeed keys merged over the generated config (advanced)."""

    @model_validator(mode="after")
    def _offload(self) -> DeepSpeed:
        if self.offload_params is not OffloadDevice.NONE and self.zero_stage != 3:
            raise ValueError("offloadParams needs zeroStage 3")
        if self.offload_optimizer is not OffloadDevice.NONE and self.zero_stage == 0:
            raise ValueError("offloadOptimizer needs zeroStage ≥ 1")
        return self


class Checkpointing(ApiModel):
    """Periodic checkpoints to the artifact store, with automatic resume."""

    every_steps: int = Field(default=500, ge=1)
    """Save every this many optimizer steps (and at the end)."""
    keep_last: int = Field(default=3, ge=1, le=1000)
    """Checkpoints kept; older ones are deleted after a newer one is complete."""
    resume: bool = True
    """Resume from the latest complete checkpoint of this job when one exists."""


class Topology(ApiModel):
    """Nodes × GPUs per node; each node runs one pod with one process per GPU."""

    nodes: int = Field(default=1, ge=1, le=4096)
    """Pods (nodes) in the job."""
    gpus_per_node: int = Field(default=0, ge=0, le=16)
    """GPUs per pod (`nvidia.com/gpu`); 0 trains on the CPU."""


PEAK_BF16_FLOPS: dict[str, float] = {
    "h200": 989e12,
    "h100": 989e12,
    "a100": 312e12,
    "l40s": 362e12,
    "l4": 121e12,
    "a10g": 125e12,
    "mi300x": 1307e12,
}
"""Dense bf16 tensor-core peak FLOP/s of one device (vendor data sheets, without sparsity); the
denominator of model FLOPs utilisation. Keys are lower-case fragments of the device name."""


def peak_flops_for(device_name: str) -> float | None:
    """Peak bf16 FLOP/s of a device from its name (e.g. `NVIDIA H100 80GB HBM3`), or None if unknown."""
    name = device_name.lower().replace(" ", "")
    for key in sorted(PEAK_BF16_FLOPS, key=len, reverse=True):
        if key in name:
            return PEAK_BF16_FLOPS[key]
    return None


def train_state_bytes(params: int, *, zero_stage: int, world: int, precision: Precision) -> float:
    """Bytes of weights + gradients + AdamW state on one device under ZeRO (activations excluded).

    Mixed precision keeps 16-bit weights and gradients plus fp32 master weights, momentum and variance
    (2 + 2 + 12 bytes/param, the ZeRO paper's Ψ accounting); fp32 keeps 4 + 4 + 8. Stage 1 partitions
    the optimizer state over `world` devices, stage 2 also the gradients, stage 3 also the weights.
    """
    weights, grads, optim = (4.0, 4.0, 8.0) if precision is Precision.FP32 else (2.0, 2.0, 12.0)
    if zero_stage >= 1:
        optim /= world
    if zero_stage >= 2:
        grads /= world
    if zero_stage >= 3:
        weights /= world
    return params * (weights + grads + optim)


def checkpoint_bytes(params: int, *, zero_stage: int, world: int, precision: Precision) -> float:
    """Bytes of the checkpoint files one process writes: the 16-bit (fp32) weights, which every rank
    holds below ZeRO stage 3, plus its partition of the fp32 master weights, momentum and variance —
    `train_state_bytes` without the gradients, which are not saved."""
    weights, _, optim = (4.0, 4.0, 8.0) if precision is Precision.FP32 else (2.0, 2.0, 12.0)
    if zero_stage >= 1:
        optim /= world
    if zero_stage >= 3:
        weights /= world
    return params * (weights + optim)


def activation_bytes(*, layers: int, hidden: int, seq_length: int, micro_batch: int, checkpointing: bool) -> float:
    """Activation memory of one micro-batch (Korthikanti et al. 2022, 16-bit, flash attention so no
    s² term): 34·s·b·h per layer, or just the layer inputs (2·s·b·h) with activation checkpointing."""
    per_layer = (2.0 if checkpointing else 34.0) * seq_length * micro_batch * hidden
    return layers * per_layer
