"""`PretrainJob`: next-token pretraining of a decoder-only transformer on a Dataset's shards."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import Field, field_validator, model_validator

from lmforge.api.meta import ApiModel, LocalRef, ModelRef, ObjectMeta, Rule, Status
from lmforge.api.scheduling import Compute
from lmforge.api.tracking import Tracking
from lmforge.api.training import Checkpointing, DeepSpeed, Optimizer, Precision, Topology


class ModelFamily(StrEnum):
    LLAMA = "llama"


class Architecture(ApiModel):
    """A Llama-style decoder (RMSNorm, rotary embeddings, SwiGLU, optional grouped-query attention);
    the exported model is a plain Hugging Face `LlamaForCausalLM`."""

    rules = (
        Rule(
            "has(self.headDim) || self.hiddenSize % self.numHeads == 0",
            "hiddenSize must be divisible by numHeads, or set headDim",
            "hiddenSize",
        ),
        Rule(
            "!has(self.numKvHeads) || self.numHeads % self.numKvHeads == 0",
            "numHeads must be a multiple of numKvHeads",
            "numHeads",
        ),
    )

    family: ModelFamily = ModelFamily.LLAMA
    """Architecture family."""
    num_layers: int = Field(default=12, ge=1, le=512)
    """Transformer blocks."""
    hidden_size: int = Field(default=768, ge=8, le=65536)
    """Model width."""
    intermediate_size: int | None = Field(default=None, ge=8)
    """SwiGLU inner width; default ≈ 8/3 × hiddenSize rounded up to a multiple of 64."""
    num_heads: int = Field(default=12, ge=1, le=1024)
    """Attention heads."""
    num_kv_heads: int | None = Field(default=None, ge=1)
    """Key/value heads (grouped-query attention); default equals numHeads."""
    head_dim: int | None = Field(default=None, ge=8, le=1024)
    """Per-head width; default hiddenSize / numHeads. vLLM's CPU backend needs ≥ 32."""
    max_position_embeddings: int | None = Field(default=None, ge=8)
    """Context length; default the Dataset's seqLength."""
    rope_theta: float = Field(default=10000.0, gt=0)
    """Rotary embedding base."""
    rms_norm_eps: float = Field(default=1e-5, gt=0)
    """RMSNorm ε."""
    tie_embeddings: bool = False
    """Share input embedding and output projection weights."""

    @model_validator(mode="after")
    def _shapes(self) -> Architecture:
        if self.head_dim is None and self.hidden_size % self.num_heads:
            raise ValueError(
                f"hiddenSize ({self.hidden_size}) must be divisible by numHeads ({self.num_heads}), or set headDim"
            )
        kv = self.num_kv_heads or self.num_heads
        if self.num_heads % kv:
            raise ValueError(f"numHeads ({self.num_heads}) must be a multiple of numKvHeads ({kv})")
        return self

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads

    @property
    def resolved_intermediate_size(self) -> int:
        """SwiGLU width: the spec's, else 8/3 × hidden rounded up to a multiple of 64 (LLaMA's rule)."""
        if self.intermediate_size is not None:
            return self.intermediate_size
        return -(-(8 * self.hidden_size // 3) // 64) * 64

    def parameter_count(self, vocab_size: int) -> int:
        """Trainable parameters of the `LlamaForCausalLM` this describes (no biases)."""
        h, d = self.hidden_size, self.resolved_head_dim
        kv = self.num_kv_heads or self.num_heads
        attention = h * self.num_heads * d * 2 + h * kv * d * 2  # q, o + k, v
        mlp = 3 * h * self.resolved_intermediate_size  # gate, up, down
        per_layer = attention + mlp + 2 * h  # two RMSNorm weights
        embeddings = vocab_size * h * (1 if self.tie_embeddings else 2)
        return self.num_layers * per_layer + embeddings + h  # final norm

    def flops_per_token(self, vocab_size: int, seq_length: int) -> float:
        """Training FLOPs per token: 6·N for the weights plus 12·layers·heads·headDim·seq for attention
        scores (the PaLM/Megatron estimate used for MFU)."""
        n = self.parameter_count(vocab_size)
        return 6.0 * n + 12.0 * self.num_layers * self.num_heads * self.resolved_head_dim * seq_length


class Training(ApiModel):
    """Batch, length and duration of training."""

    rules = (Rule("has(self.maxSteps) != has(self.tokens)", "set exactly one of maxSteps or tokens", "maxSteps"),)

    max_steps: int | None = Field(default=None, ge=1)
    """Optimizer steps to train; or set `tokens`."""
    tokens: int | None = Field(default=None, ge=1)
    """Token budget; steps = tokens / (global batch × seqLength)."""
    micro_batch_size: int = Field(default=8, ge=1, le=65536)
    """Sequences per process per forward pass."""
    gradient_accumulation_steps: int = Field(default=1, ge=1, le=65536)
    """Micro-batches accumulated per optimizer step."""
    precision: Precision = Precision.BF16
    """Numeric precision of training. On a CPU without native bf16 (no AVX512-BF16 or AMX), bf16 trains
    in fp32 instead, said in the stage's log: emulated bf16 ran ~100x slower than fp32 there (env
    `LMFORGE_CPU_BF16=emulated` keeps bf16)."""
    gradient_clipping: float = Field(default=1.0, ge=0)
    """Clip the global gradient norm to this (0 disables)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory."""
    seed: int = Field(default=1234, ge=0)
    """Seed of initialisation and data order."""
    max_bad_steps: int = Field(default=5, ge=0)
    """Consecutive NaN/Inf-loss micro-batches skipped (never backpropagated) before the job stops."""
    compile: bool | Literal["auto"] = "auto"
    """`torch.compile` the model: `true` always, `false` never, `auto` (default) when the run's
    remaining steps pay for it — the stage times a few eager steps, takes the compile cost (the
    compiled first step's extra seconds, and compiled vs eager step time) measured once per model
    shape, batch, machine and torch version, and compiles when the projected saving is at least
    twice the cost; the decision and its figures are in the log and the result's metrics."""

    @field_validator("compile", mode="before")
    @classmethod
    def _compile_choice(cls, value: object) -> object:
        """Exactly what the CRD's enum accepts: one error naming the field, not one per union member,
        and no lax `"yes"` or `1` for a boolean the API server would refuse."""
        if value is True or value is False or value == "auto":
            return value
        raise ValueError(f'must be true, false or "auto" (got {value!r})')

    @model_validator(mode="after")
    def _duration(self) -> Training:
        if (self.max_steps is None) == (self.tokens is None):
            raise ValueError("set exactly one of maxSteps or tokens")
        return self


class Validation(ApiModel):
    """Periodic held-out loss and perplexity."""

    every_steps: int = Field(default=200, ge=1)
    """Evaluate every this many steps (and at the end)."""
    batches: int = Field(default=20, ge=1)
    """Validation micro-batches per evaluation."""


class Replay(ApiModel):
    """Continual pretraining: mix in the earlier Dataset's shards to limit forgetting."""

    dataset_ref: LocalRef
    """The earlier Dataset."""
    fraction: float = Field(default=0.1, gt=0, lt=1)
    """Fraction of each batch's sequences drawn from it."""


class PretrainMetrics(ApiModel):
    """How model FLOPs utilisation is computed."""

    peak_flops_per_device: float | None = Field(default=None, gt=0)
    """Peak FLOP/s of one device in the training precision; default from a table of known GPUs,
    or measured matmul throughput on the CPU."""
    port: int = Field(default=9400, ge=1024, le=65535)
    """Port of rank 0's Prometheus endpoint."""


class PretrainCheckpointing(Checkpointing):
    """Periodic checkpoints to the artifact store, with automatic resume; optionally written in the
    background while training goes on."""

    async_: bool = Field(default=True, alias="async")
    """Copy the state to host memory at the step boundary and serialise + upload it in the background
    while training continues; `latest` moves only once the upload is complete, at most one save is in
    flight, and the final save and the save on SIGTERM wait for it. On by default: it is used where
    host memory holds one more copy of a process's checkpoint state (the stage checks at start and
    otherwise saves synchronously, with a warning); `false` always saves synchronously."""


class PretrainJobSpec(ApiModel):
    """What to train, on what, and how."""

    rules = (
        Rule(
            "!has(self.replay) || has(self.initFrom)", "replay is for continual pretraining: set initFrom too", "replay"
        ),
        Rule(
            "!has(self.training) || self.training.precision != 'fp16' || (has(self.topology) && self.topology.gpusPerNode > 0)",
            "training.precision fp16 needs GPUs (topology.gpusPerNode > 0)",
            "training.precision",
        ),
    )

    dataset_ref: LocalRef
    """The Dataset whose shards and tokenizer are used."""
    model: Architecture = Field(default_factory=Architecture)
    """Model architecture."""
    init_from: ModelRef | None = None
    """Continue training this model instead of starting from random weights."""
    replay: Replay | None = None
    """Replay of an earlier Dataset (continual pretraining)."""
    training: Training
    """Batch and duration."""
    optimizer: Optimizer = Field(default_factory=Optimizer)
    """Optimizer and LR schedule."""
    deepspeed: DeepSpeed = Field(default_factory=DeepSpeed)
    """DeepSpeed engine."""
    checkpoint: PretrainCheckpointing = Field(default_factory=PretrainCheckpointing)
    """Checkpoints."""
    validation: Validation = Field(default_factory=Validation)
    """Validation."""
    topology: Topology = Field(default_factory=Topology)
    """Nodes × GPUs."""
    metrics: PretrainMetrics = Field(default_factory=PretrainMetrics)
    """Metrics."""
    compute: Compute = Field(default_factory=Compute)
    """Pod resources and placement."""
    tracking: Tracking = Field(default_factory=Tracking)
    """Experiment tracking (MLflow experiment, tags, off)."""

    @model_validator(mode="after")
    def _checks(self) -> PretrainJobSpec:
        if self.replay is not None and self.init_from is None:
            raise ValueError("replay is for continual pretraining: set initFrom too")
        if self.training.precision is Precision.FP16 and self.topology.gpus_per_node == 0:
            raise ValueError("training.precision fp16 needs GPUs (topology.gpusPerNode > 0); use bf16 or fp32")
        return self


class PretrainJob(ApiModel):
    """Next-token pretraining with DeepSpeed, checkpoints and Hugging Face export."""

    api_version: Literal["lmforge.io/v1alpha1"] = "lmforge.io/v1alpha1"
    """`lmforge.io/v1alpha1`."""
    kind: Literal["PretrainJob"] = "PretrainJob"
    """`PretrainJob`."""
    metadata: ObjectMeta
    """Standard object metadata."""
    spec: PretrainJobSpec
    """Desired training."""
    status: Status | None = None
    """Observed state, written by LMForge."""
