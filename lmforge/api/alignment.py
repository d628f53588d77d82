"""`AlignmentJob`: SFT, reward model, PPO (RLHF) and DPO/IPO on a base model, fully or with
LoRA/QLoRA adapters. Built on trl and peft; this is the declarative surface."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import Field, model_validator

from lmforge.api.meta import ApiModel, LocalRef, ModelRef, ObjectMeta, Rule, Status
from lmforge.api.scheduling import Compute
from lmforge.api.tracking import Tracking
from lmforge.api.training import Checkpointing, DeepSpeed, Precision, Topology


class AlignmentMethod(StrEnum):
    """What the job trains."""

    SFT = "sft"
    """Instruction tuning on prompt–response pairs or chats; loss on assistant tokens only."""
    REWARD = "reward"
    """A reward model (sequence-classification head) on preference pairs."""
    PPO = "ppo"
    """RLHF: policy rollouts scored by a reward model, KL-penalised to the reference model."""
    DPO = "dpo"
    """Direct preference optimisation on preference pairs."""
    IPO = "ipo"
    """DPO with the IPO loss."""


class DataFormat(StrEnum):
    AUTO = "auto"
    JSONL = "jsonl"
    PARQUET = "parquet"


class AlignmentData(ApiModel):
    """Training rows: `prompt`/`response` or `messages` for SFT; `prompt`/`chosen`/`rejected` for
    reward and DPO; `prompt` for PPO."""

    uri: str = Field(min_length=1)
    """File, glob or S3 prefix of the rows."""
    format: DataFormat = DataFormat.AUTO
    """File format."""
    validation_fraction: float = Field(default=0.05, ge=0, lt=1)
    """Fraction of rows held out for validation metrics."""
    skip_bad_rows: bool = False
    """Count and skip malformed rows instead of failing on the first one."""


class AdapterType(StrEnum):
    NONE = "none"
    LORA = "lora"
    QLORA = "qlora"


class AdapterOutput(StrEnum):
    ADAPTER = "adapter"
    MERGED = "merged"


class Adapter(ApiModel):
    """Parameter-efficient fine-tuning with peft."""

    type: AdapterType = AdapterType.NONE
    """`none` trains every weight; `lora`; `qlora` (4-bit base, needs a GPU and bitsandbytes)."""
    r: int = Field(default=16, ge=1, le=1024)
    """LoRA rank."""
    alpha: int = Field(default=32, ge=1)
    """LoRA α (scaling α / r)."""
    dropout: float = Field(default=0.05, ge=0, lt=1)
    """LoRA dropout."""
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    """Module names (suffixes) that get adapters; a name matching no module is an error."""
    output: AdapterOutput = AdapterOutput.MERGED
    """`merged` publishes the `model` artifact with the adapter merged in; `adapter` publishes only the
    `adapter` artifact (peft format, naming the base model), and no `model`, so later stages never take
    the untouched base for the trained model."""


class SftOptions(ApiModel):
    """Supervised fine-tuning options."""

    packing: bool = False
    """Pack several short examples into one sequence."""
    assistant_only_loss: bool = True
    """Mask prompt (system/user) tokens out of the loss."""


class PreferenceOptions(ApiModel):
    """DPO/IPO options."""

    beta: float = Field(default=0.1, gt=0, le=10)
    """Strength of the KL constraint to the reference model."""


class PpoOptions(ApiModel):
    """PPO options."""

    rules = (
        Rule('has(self.rewardModelRef) != has(self.rewardFunction)',
             'set exactly one of rewardModelRef or rewardFunction', 'rewardModelRef'),
    )

    reward_model_ref: LocalRef | None = None
    """An AlignmentJob with `method: reward` whose model scores rollouts."""
    reward_function: str | None = Field(default=None, pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    """`module:function(prompt, completion) -> float` used instead of a reward model."""
    kl_coef: float = Field(default=0.05, ge=0)
    """KL penalty coefficient to the reference model."""
    clip_range: float = Field(default=0.2, gt=0, lt=1)
    """PPO ratio clipping."""
    rollout_batch_size: int = Field(default=16, ge=1)
    """Prompts per rollout batch."""
    response_length: int = Field(default=32, ge=1, le=8192)
    """Tokens generated per rollout."""

    @model_validator(mode="after")
    def _reward(self) -> PpoOptions:
        if (self.reward_model_ref is None) == (self.reward_function is None):
            raise ValueError("set exactly one of rewardModelRef or rewardFunction")
        return self


class AlignmentTraining(ApiModel):
    """Duration, batch and optimizer."""

    epochs: float = Field(default=1.0, gt=0, le=1000)
    """Passes over the training rows (ignored when maxSteps is set)."""
    max_steps: int | None = Field(default=None, ge=1)
    """Optimizer steps, overriding epochs."""
    micro_batch_size: int = Field(default=4, ge=1)
    """Rows per process per forward pass."""
    gradient_accumulation_steps: int = Field(default=1, ge=1)
    """Micro-batches per optimizer step."""
    lr: float = Field(default=2e-5, gt=0, le=1)
    """Peak learning rate (LoRA usually wants ~1e-4)."""
    warmup_ratio: float = Field(default=0.03, ge=0, lt=1)
    """Fraction of steps spent warming up."""
    max_length: int = Field(default=1024, ge=8)
    """Truncate rows to this many tokens; rows whose answer would be cut away entirely are counted
    and dropped."""
    precision: Precision = Precision.BF16
    """Numeric precision."""
    gradient_checkpointing: bool = False
    """Recompute activations to save memory."""
    seed: int = Field(default=1234, ge=0)
    """Seed."""


class AlignmentJobSpec(ApiModel):
    """Base model, method, data and training settings."""

    rules = (
        Rule("(self.method == 'ppo') == has(self.ppo)",
             'the `ppo` options are needed by, and only for, method ppo', 'ppo'),
        Rule("!has(self.adapter) || self.adapter.type != 'qlora' || (has(self.topology) && self.topology.gpusPerNode > 0)",
             'adapter.type qlora needs a GPU (topology.gpusPerNode > 0)', 'adapter.type'),
        Rule("self.method != 'reward' || !has(self.adapter) || self.adapter.type == 'none' || self.adapter.output == 'merged'",
             'a reward model is published merged: adapter.output must be merged for method reward', 'adapter.output'),
    )

    model_ref: ModelRef
    """The base model."""
    method: AlignmentMethod
    """What to train."""
    data: AlignmentData
    """Training rows."""
    chat_template: str | None = None
    """Jinja chat template; default: the base tokenizer's, else LMForge's template over the special
    tokens the Dataset stage reserved."""
    adapter: Adapter = Field(default_factory=Adapter)
    """LoRA/QLoRA."""
    sft: SftOptions = Field(default_factory=SftOptions)
    """SFT options (method sft)."""
    preference: PreferenceOptions = Field(default_factory=PreferenceOptions)
    """DPO/IPO options."""
    ppo: PpoOptions | None = None
    """PPO options (required for method ppo)."""
    training: AlignmentTraining = Field(default_factory=AlignmentTraining)
    """Training settings."""
    deepspeed: DeepSpeed = Field(default_factory=lambda: DeepSpeed(zero_stage=0))
    """DeepSpeed engine (GPUs)."""
    checkpoint: Checkpointing = Field(default_factory=lambda: Checkpointing(every_steps=100))
    """Checkpoints."""
    topology: Topology = Field(default_factory=Topology)
    """Nodes × GPUs."""
    compute: Compute = Field(default_factory=Compute)
    """Pod resources and placement."""
    tracking: Tracking = Field(default_factory=Tracking)
    """Experiment tracking (MLflow experiment, tags, off)."""

    @model_validator(mode="after")
    def _checks(self) -> AlignmentJobSpec:
        if self.method is AlignmentMethod.PPO and self.ppo is None:
            raise ValueError("method ppo needs the `ppo` options (rewardModelRef or rewardFunction)")
        if self.method is not AlignmentMethod.PPO and self.ppo is not None:
            raise ValueError(f"`ppo` options are only for method ppo, not {self.method.value}")
        if self.adapter.type is AdapterType.QLORA and self.topology.gpus_per_node == 0:
            raise ValueError(
                "adapter.type qlora needs a GPU (4-bit bitsandbytes): set topology.gpusPerNode > 0, or use lora"
            )
        if self.method is AlignmentMethod.REWARD and self.adapter.output is AdapterOutput.ADAPTER \
                and self.adapter.type is not AdapterType.NONE:
            raise ValueError("a reward model is published merged: adapter.output must be merged for method reward")
        return self


class AlignmentJob(ApiModel):
    """Instruction tuning, RLHF or DPO of a base model."""

    api_version: Literal["lmforge.io/v1alpha1"] = "lmforge.io/v1alpha1"
    """`lmforge.io/v1alpha1`."""
    kind: Literal["AlignmentJob"] = "AlignmentJob"
    """`AlignmentJob`."""
    metadata: ObjectMeta
    """Standard object metadata."""
    spec: AlignmentJobSpec
    """Desired alignment."""
    status: Status | None = None
    """Observed state, written by LMForge."""
