"""`AlignmentJob`: SFT, reward model, PPO (RLHF), DPO/IPO, KTO and group-relative RL (GRPO, RLOO) with
verifiable rewards on a base model, fully or with LoRA/QLoRA adapters. Built on trl and peft; this is
the declarative surface.

ORPO and SimPO are not offered: trl 1.16 ships them only under `trl.experimental` (ORPOTrainer,
CPOTrainer with `loss_type="simpo"`), whose API may change in any release; see docs/alignment.md."""

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
    KTO = "kto"
    """Kahneman–Tversky optimisation on unpaired rows (`prompt`, `completion`, `label: true|false`),
    the shape thumbs-up/down feedback comes in."""
    GRPO = "grpo"
    """Group-relative policy optimisation: `grpo.numGenerations` completions per prompt, scored by
    `grpo.rewards`, advantages normalised within each group; no value model."""
    RLOO = "rloo"
    """REINFORCE leave-one-out: like GRPO, each completion's baseline is the mean of the others in its
    group; options under `rloo`."""


class DataFormat(StrEnum):
    AUTO = "auto"
    JSONL = "jsonl"
    PARQUET = "parquet"


class AlignmentData(ApiModel):
    """Training rows: `prompt`/`response` or `messages` for SFT; `prompt`/`chosen`/`rejected` for
    reward and DPO; `prompt`/`completion`/`label` for KTO; `prompt` for PPO, GRPO and RLOO (plus the
    columns rewards read, e.g. `answer`)."""

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
        Rule(
            "has(self.rewardModelRef) != has(self.rewardFunction)",
            "set exactly one of rewardModelRef or rewardFunction",
            "rewardModelRef",
        ),
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


class RewardType(StrEnum):
    """Kinds of reward for GRPO/RLOO."""

    ANSWER = "answer"
    """1 when the answer extracted from the completion equals the row's reference answer, else 0."""
    FORMAT = "format"
    """1 when the completion matches `pattern` (searched, `re.DOTALL`), else 0."""
    FUNCTION = "function"
    """`module:function(prompt, completion, **row) -> float`, the row's columns as keyword arguments."""
    MODEL = "model"
    """A reward model (an AlignmentJob with `method: reward`) scores prompt + completion."""
    CODE = "code"
    """1 when the completion, run with the row's tests in the code sandbox (the EvalSuite's
    bubblewrap sandbox, fail-closed), passes: the harness reports success after the last test, so an
    early `exit(0)` scores 0. Else 0."""


class AnswerExtraction(StrEnum):
    """Where the answer sits in a completion."""

    LAST_NUMBER = "lastNumber"
    """The last number in the text (`-3`, `1,024`, `2.5`)."""
    BOXED = "boxed"
    """The content of the last `\\boxed{…}`."""
    REGEX = "regex"
    """Group 1 (or the whole match) of the last match of `pattern`."""


class Reward(ApiModel):
    """One reward term; a completion's reward is the weighted sum of its terms."""

    type: RewardType
    """What scores the completion."""
    weight: float = Field(default=1.0, ge=-100, le=100)
    """Weight of this term in the sum."""
    extract: AnswerExtraction = AnswerExtraction.LAST_NUMBER
    """type answer: how the answer is taken out of the completion."""
    pattern: str | None = Field(default=None, min_length=1, max_length=1000)
    """type format: the regex the completion must match; type answer with extract regex: the regex
    whose group 1 is the answer."""
    answer_field: str = Field(default="answer", pattern=r"^[A-Za-z_]\w*$")
    """type answer: the row column holding the reference answer."""
    numeric: bool = True
    """type answer: compare as numbers when both sides parse as numbers (`4.0` equals `4`), else as
    whitespace-trimmed strings."""
    function: str | None = Field(default=None, pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    """type function: `module:function`."""
    model_ref: LocalRef | None = None
    """type model: the AlignmentJob (method reward) whose `model` scores completions."""
    test_field: str = Field(default="test", pattern=r"^[A-Za-z_]\w*$")
    """type code: the row column holding the tests (HumanEval style: they define `check(candidate)`)."""
    entry_point_field: str | None = Field(default="entry_point", pattern=r"^[A-Za-z_]\w*$")
    """type code: the row column naming the function `check` is called with; null: the tests run as
    they are (asserts at top level)."""
    prefix_field: str | None = Field(default=None, pattern=r"^[A-Za-z_]\w*$")
    """type code: a row column put before the completion (HumanEval: the function head the model
    completes); null: the completion is the whole program."""
    timeout_seconds: float = Field(default=5.0, gt=0, le=120)
    """type code: wall-clock limit per program (CPU limit the same, rounded up)."""

    @model_validator(mode="after")
    def _fields(self) -> Reward:
        import re

        if self.pattern is not None:
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"pattern is not a valid regex: {exc}") from None
        needs = {
            RewardType.FORMAT: ("pattern", self.pattern),
            RewardType.FUNCTION: ("function", self.function),
            RewardType.MODEL: ("modelRef", self.model_ref),
        }
        if self.type in needs and needs[self.type][1] is None:
            raise ValueError(f"a reward of type {self.type.value} needs `{needs[self.type][0]}`")
        if self.type is RewardType.ANSWER and self.extract is AnswerExtraction.REGEX and self.pattern is None:
            raise ValueError("a reward of type answer with extract regex needs `pattern`")
        if self.type is not RewardType.FUNCTION and self.function is not None:
            raise ValueError(f"`function` is only for rewards of type function, not {self.type.value}")
        if self.type is not RewardType.MODEL and self.model_ref is not None:
            raise ValueError(f"`modelRef` is only for rewards of type model, not {self.type.value}")
        return self


class RolloutEngine(StrEnum):
    """What generates the completions."""

    AUTO = "auto"
    """vLLM (colocated in the training process) when it is installed and the run is on a GPU, else
    transformers' `generate` (with a warning in the log): on the CPU vLLM's engine start is not
    earned back by a short run."""
    VLLM = "vllm"
    """vLLM colocated, on a GPU or on vLLM's CPU build (one process there); an error where it cannot
    run (not installed, or several CPU processes)."""
    GENERATE = "generate"
    """transformers' `generate` in the training process."""


class GroupRlOptions(ApiModel):
    """GRPO / RLOO options: rollouts per prompt, rewards, KL."""

    num_generations: int = Field(default=8, ge=2, le=256)
    """Completions per prompt (the group); the rollout batch (`microBatchSize` × accumulation ×
    processes) must be a multiple of it."""
    max_completion_length: int = Field(default=256, ge=1, le=32768)
    """Tokens generated per completion (it stops earlier at EOS or the end of the turn)."""
    temperature: float = Field(default=1.0, gt=0, le=5)
    """Sampling temperature of the rollouts."""
    beta: float = Field(default=0.0, ge=0, le=10)
    """KL coefficient to the reference model; 0 loads no reference model (trl's default since 2025)."""
    rewards: list[Reward] = Field(min_length=1, max_length=16)
    """Reward terms, summed with their weights."""
    rollouts: RolloutEngine = RolloutEngine.AUTO
    """What generates the completions."""


class AlignmentTraining(ApiModel):
    """Duration, batch and optimizer."""

    epochs: float = Field(default=1.0, gt=0, le=1000)
    """Passes over the training rows (ignored when maxSteps is set)."""
    max_steps: int | None = Field(default=None, ge=1)
    """Optimizer steps, overriding epochs."""
    micro_batch_size: int = Field(default=4, ge=1)
    """Rows per process per forward pass."""
    gradient_accumulation_steps: int = Field(default=1, ge=1)
    """Micro-batches per optimizer step (must be 1 for PPO)."""
    lr: float = Field(default=2e-5, gt=0, le=1)
    """Peak learning rate (LoRA usually wants ~1e-4)."""
    warmup_ratio: float = Field(default=0.03, ge=0, lt=1)
    """Fraction of optimizer steps spent warming up linearly (PPO too)."""
    max_length: int = Field(default=1024, ge=8)
    """Truncate rows to this many tokens; rows whose answer would be cut away entirely are counted
    and dropped."""
    precision: Precision = Precision.BF16
    """Numeric precision of training. On a CPU without native bf16 (no AVX512-BF16 or AMX), bf16 trains
    in fp32 instead, said in the stage's log: emulated bf16 ran ~100x slower than fp32 there (env
    `LMFORGE_CPU_BF16=emulated` keeps bf16)."""
    gradient_checkpointing: bool = False
    """Recompute activations to save memory."""
    seed: int = Field(default=1234, ge=0)
    """Seed."""


class KtoOptions(ApiModel):
    """KTO options."""

    beta: float = Field(default=0.1, gt=0, le=10)
    """Strength of the KL constraint to the reference model."""
    desirable_weight: float = Field(default=1.0, gt=0, le=100)
    """Loss weight of rows labelled true (raise it when they are the minority)."""
    undesirable_weight: float = Field(default=1.0, gt=0, le=100)
    """Loss weight of rows labelled false."""


class AlignmentJobSpec(ApiModel):
    """Base model, method, data and training settings."""

    rules = (
        Rule(
            "(self.method == 'ppo') == has(self.ppo)",
            "the `ppo` options are needed by, and only for, method ppo",
            "ppo",
        ),
        Rule(
            "!has(self.adapter) || self.adapter.type != 'qlora' || (has(self.topology) && self.topology.gpusPerNode > 0)",
            "adapter.type qlora needs a GPU (topology.gpusPerNode > 0)",
            "adapter.type",
        ),
        Rule(
            "self.method != 'reward' || !has(self.adapter) || self.adapter.type == 'none' || self.adapter.output == 'merged'",
            "a reward model is published merged: adapter.output must be merged for method reward",
            "adapter.output",
        ),
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
    kto: KtoOptions = Field(default_factory=KtoOptions)
    """KTO options (method kto)."""
    grpo: GroupRlOptions | None = None
    """GRPO options (required for method grpo)."""
    rloo: GroupRlOptions | None = None
    """RLOO options (required for method rloo)."""
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
        if self.method is AlignmentMethod.PPO:
            self._ppo_checks()
        for method, opts in ((AlignmentMethod.GRPO, self.grpo), (AlignmentMethod.RLOO, self.rloo)):
            name = method.value
            if self.method is method and opts is None:
                raise ValueError(f"method {name} needs the `{name}` options (at least one reward)")
            if self.method is not method and opts is not None:
                raise ValueError(f"`{name}` options are only for method {name}, not {self.method.value}")
        if self.adapter.type is AdapterType.QLORA and self.topology.gpus_per_node == 0:
            raise ValueError(
                "adapter.type qlora needs a GPU (4-bit bitsandbytes): set topology.gpusPerNode > 0, or use lora"
            )
        if (
            self.method is AlignmentMethod.REWARD
            and self.adapter.output is AdapterOutput.ADAPTER
            and self.adapter.type is not AdapterType.NONE
        ):
            raise ValueError("a reward model is published merged: adapter.output must be merged for method reward")
        return self

    def _ppo_checks(self) -> None:
        """Our PPO loop runs in one process without DeepSpeed and steps the optimizer once per
        micro-batch; say so rather than ignore the settings."""
        if self.deepspeed.zero_stage != 0:
            raise ValueError("method ppo does not run under DeepSpeed: set deepspeed.zeroStage to 0")
        if self.training.gradient_accumulation_steps != 1:
            raise ValueError(
                "method ppo steps the optimizer on every micro-batch: "
                "training.gradientAccumulationSteps must be 1 (raise training.microBatchSize instead)"
            )
        if self.topology.nodes > 1 or self.topology.gpus_per_node > 1:
            raise ValueError("method ppo runs in one process: set topology to 1 node with at most 1 GPU")


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
