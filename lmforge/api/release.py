"""`ModelRelease`: compress a model (quantize, prune, distil) and serve it with vLLM once its
EvalSuite gate has passed."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field, model_validator

from lmforge.api.meta import ApiModel, LocalRef, ModelRef, ObjectMeta, Rule, SecretKeyRef, Status
from lmforge.api.pretrain import Architecture
from lmforge.api.scheduling import Compute
from lmforge.api.tracking import Tracking


class QuantMethod(StrEnum):
    NONE = "none"
    INT8_WEIGHT = "int8-weight"
    """INT8 weight-only (W8A16)."""
    W8A8 = "w8a8"
    """INT8 weights and activations."""
    INT4 = "int4"
    """INT4 weight-only (W4A16), symmetric, per `groupSize` weights, round-to-nearest."""
    INT4_GPTQ = "int4-gptq"
    """INT4 weight-only (W4A16, same format as `int4`), GPTQ: rounding errors compensated column by
    column with each layer's input statistics from the calibration rows."""
    INT4_AWQ = "int4-awq"
    """INT4 weight-only (W4A16, same format as `int4`), AWQ-style: input channels scaled by their mean
    calibration activation (inverse folded into the preceding RMSNorm/Linear), then round-to-nearest.
    Llama/Mistral/Qwen2/Qwen3 architectures."""


class Quantization(ApiModel):
    """Post-training quantization to a format vLLM loads."""

    method: QuantMethod = QuantMethod.NONE
    """Scheme."""
    group_size: int = Field(default=128, ge=8, le=4096)
    """Weights per quantization group (INT4); every quantized layer's input width must be a multiple."""
    calibration_samples: int = Field(default=64, ge=1, le=65536)
    """Sequences of calibration data: the rows the before/after perplexity is measured on, and
    GPTQ/AWQ's calibration activations (round-to-nearest schemes need none)."""
    calibration_dataset_ref: LocalRef | None = None
    """Dataset for calibration (its validation split). Without it or `calibrationUri`: the Dataset the
    model was pretrained on, else the rows its AlignmentJob trained on (`spec.data.uri`), else the
    distillation Dataset; none of these is an error naming the choices."""
    calibration_uri: str | None = Field(default=None, min_length=1)
    """Calibration rows instead of a Dataset: JSONL or Parquet (a file, glob, directory or `s3://`
    prefix; relative paths resolve against the run's base directory) of `{"text": …}`, chat
    `{"messages": […]}` or `{"prompt": …, "response"|"chosen": …}` rows, rendered with the model's chat
    template, tokenized with its tokenizer and packed into sequences. For an external model fine-tuned on
    its own chat data."""
    max_perplexity_increase: float = Field(default=0.05, ge=0, le=10)
    """Refuse to publish when held-out perplexity rises by more than this fraction."""

    @model_validator(mode="after")
    def _one_calibration_source(self) -> Quantization:
        if self.calibration_dataset_ref is not None and self.calibration_uri is not None:
            raise ValueError("set at most one of calibrationDatasetRef and calibrationUri")
        return self


class PruneMethod(StrEnum):
    NONE = "none"
    MAGNITUDE = "magnitude"
    SEMI_STRUCTURED_2_4 = "2:4"


class Pruning(ApiModel):
    """Weight pruning."""

    method: PruneMethod = PruneMethod.NONE
    """Unstructured magnitude, or 2:4 semi-structured."""
    sparsity: float = Field(default=0.5, gt=0, lt=1)
    """Target fraction of zero weights (2:4 is always 0.5)."""


class Distillation(ApiModel):
    """Train a smaller student on the teacher's logits."""

    student: Architecture
    """Student architecture."""
    dataset_ref: LocalRef
    """Dataset whose shards are used."""
    temperature: float = Field(default=2.0, gt=0, le=100)
    """Softmax temperature of the soft targets."""
    alpha: float = Field(default=0.5, ge=0, le=1)
    """Weight of the KL term; 1 − alpha weighs the hard-label loss."""
    max_steps: int = Field(default=1000, ge=1)
    """Training steps."""
    micro_batch_size: int = Field(default=8, ge=1)
    """Sequences per step."""
    lr: float = Field(default=3e-4, gt=0, le=1)
    """Learning rate."""


class Compression(ApiModel):
    """Compression steps, applied in the order distil → prune → quantize."""

    quantization: Quantization = Field(default_factory=Quantization)
    """Quantization."""
    pruning: Pruning = Field(default_factory=Pruning)
    """Pruning."""
    distillation: Distillation | None = None
    """Distillation."""


class DType(StrEnum):
    AUTO = "auto"
    BFLOAT16 = "bfloat16"
    FLOAT16 = "float16"
    FLOAT32 = "float32"


DEFAULT_CANARY_STEPS = [10, 50]


class Canary(ApiModel):
    """A progressive canary (the operator only; `lmforge run` stays blue-green): a changed release's
    new server first serves a share of live traffic beside the version serving, one step after
    another, each held `stepSeconds` and judged on the two versions' vLLM metrics from Prometheus;
    a step whose figures fail rolls back by itself (the new server stops, the stable keeps all
    traffic), and after the last step the new version takes all traffic (the old one stops). A smoke
    suite (`smokeEvalSuiteRef`), when set, is passed first, before the new server gets any traffic
    (with a Gateway; by replica ratio its one pod already shares the release's Service). See
    docs/release.md."""

    rules = (
        Rule(
            "!has(self.steps) || (self.steps.isSorted() && self.steps.all(x, self.steps.exists_one(y, y == x)))",
            "serving.canary.steps must be strictly increasing",
            "steps",
        ),
    )

    steps: list[Annotated[int, Field(ge=1, le=99)]] = Field(
        default_factory=lambda: list(DEFAULT_CANARY_STEPS), min_length=1, max_length=20
    )
    """The new version's share of traffic at each step, in percent (1-99, strictly increasing);
    after the last step it takes all traffic. By replica ratio (no `gateway`) the share is rounded to
    whole replicas: `ceil(replicas * step / 100)` canary replicas (at least 1) beside the rest (at
    least 1)."""
    step_seconds: int = Field(default=60, ge=5, le=86400)
    """How long each step is held before its metrics are judged."""
    max_error_rate: float = Field(default=0.01, ge=0, le=1)
    """Largest share of the canary's requests in a step that may end in a 5xx."""
    max_ttft_ratio: float = Field(default=2.0, gt=0, le=1000)
    """Largest ratio of the canary's p95 time to first token to the stable version's."""
    min_requests: int = Field(default=0, ge=0)
    """Requests the canary must have answered in a step before the step may pass; fewer holds the
    step (it is judged again) rather than passing it on no evidence."""

    @model_validator(mode="after")
    def _steps_increase(self) -> Canary:
        if any(b <= a for a, b in zip(self.steps, self.steps[1:], strict=False)):
            raise ValueError(f"serving.canary.steps must be strictly increasing, not {self.steps}")
        return self


class GatewayRef(ApiModel):
    """A Gateway API `Gateway` the release's traffic enters through: the operator then keeps an
    HTTPRoute named after the release whose backend weights split traffic between the versions."""

    name: str = Field(min_length=1, max_length=253)
    """Name of the Gateway."""
    namespace: str | None = Field(default=None, min_length=1, max_length=63)
    """Its namespace; default the release's (a Gateway elsewhere must allow routes from it)."""
    section_name: str | None = Field(default=None, min_length=1, max_length=253)
    """The Gateway's listener to attach to; default all of them."""


DEFAULT_MAX_LORAS = 4
"""`--max-loras` of a release that lists adapters but sets no `serving.maxLoras`."""


class Serving(ApiModel):
    """vLLM's OpenAI-compatible server."""

    enabled: bool = True
    """Serve the release."""
    replicas: int = Field(default=1, ge=0, le=1000)
    """Deployment replicas."""
    served_model_name: str | None = None
    """Model name in the API; default the release's name."""
    dtype: DType = DType.AUTO
    """Weights dtype."""
    max_model_len: int | None = Field(default=None, ge=8)
    """Longest context served; default the model's."""
    tensor_parallel_size: int = Field(default=1, ge=1, le=64)
    """GPUs per replica for tensor parallelism."""
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    """Fraction of GPU memory vLLM may use."""
    port: int = Field(default=8000, ge=1, le=65535)
    """Container (or local) port."""
    lora_adapters: list[LocalRef] = Field(default_factory=list)
    """AlignmentJobs whose LoRA adapters this server serves over the release's model, each under its
    AlignmentJob's name as the model name in the API. The set is not part of the release's identity:
    under `lmforge run` an adapter added here (once its AlignmentJob is Ready) is loaded into the running
    server and one removed (or whose AlignmentJob is deleted) is unloaded, without a restart; the
    operator rolls the same Deployment's pods instead (docs/release.md). The release does not wait for
    an adapter: it serves without one whose AlignmentJob is not Ready and loads it when it is."""
    max_loras: int | None = Field(default=None, ge=1, le=256)
    """Adapters the server holds at once (vLLM's `--max-loras`). Set, the server always starts with
    LoRA enabled and runtime loading allowed, so adapters can be added later even to a release that
    starts with none; unset, LoRA is enabled when `loraAdapters` is non-empty, for up to 4 adapters.
    Changing it (or turning LoRA on or off) starts a new server."""
    max_lora_rank: int = Field(default=16, ge=1, le=512)
    """Largest adapter rank the server accepts (`--max-lora-rank`, rounded up to a rank vLLM supports:
    1, 8, 16, 32, 64, 128, 256, 320, 512); the server starts with at least the largest rank of the
    adapters it starts with, and an adapter loaded later with a larger rank is refused."""
    api_key_secret: SecretKeyRef | None = None
    """API key required by the server."""
    smoke_eval_suite_ref: LocalRef | None = None
    """An EvalSuite evaluating this release's endpoint (`endpoint.releaseRef` naming it) that a new
    version must pass before it takes over — blue-green: when the spec changes while a version
    serves, the new server starts beside the old one (under `lmforge run` on another port), this suite
    evaluates the new server, and only then does the old one stop (reason Promoted); if its gate fails,
    the new server stops and the old keeps serving (reason RolledBack). `status.rollout` and the
    Ready message say which URL serves which version meanwhile. The first version serves at once (there
    is nothing to protect) and the suite then evaluates it. With `canary` set (the operator), passing
    it starts the canary's first step instead of promoting."""
    canary: Canary | None = None
    """Progressive rollout of a changed release (see `Canary`); unset: blue-green as described
    under `smokeEvalSuiteRef`. Under `lmforge run` always blue-green."""
    gateway: GatewayRef | None = None
    """Split traffic by weights in a Gateway API HTTPRoute (named after the release, attached to this
    Gateway) instead of by replica ratio behind the release's Service. The route always points at the
    version(s) serving: one backend, two during a canary or smoke test (the new one at weight 0
    while smoke-tested)."""
    kv_cache_gib: float = Field(default=1.0, gt=0, le=1024)
    """CPU backend: KV-cache space in GiB."""
    extra_args: list[str] = Field(default_factory=list)
    """Extra vLLM server arguments (advanced)."""

    rules = (
        Rule(
            "!has(self.loraAdapters) || size(self.loraAdapters) <= (has(self.maxLoras) ? self.maxLoras : 4)",
            "serving.loraAdapters must not list more adapters than serving.maxLoras (default 4)",
            "loraAdapters",
        ),
    )

    @property
    def lora_enabled(self) -> bool:
        """Whether the server starts with `--enable-lora` (and runtime adapter loading)."""
        return self.max_loras is not None or bool(self.lora_adapters)

    @property
    def lora_slots(self) -> int:
        """vLLM's `--max-loras`: `maxLoras`, else `DEFAULT_MAX_LORAS`."""
        return self.max_loras or DEFAULT_MAX_LORAS

    @model_validator(mode="after")
    def _adapters_fit(self) -> Serving:
        names = [r.name for r in self.lora_adapters]
        if len(set(names)) != len(names):
            raise ValueError(f"serving.loraAdapters names an AlignmentJob twice: {names}")
        if len(names) > self.lora_slots:
            raise ValueError(
                f"serving.loraAdapters lists {len(names)} adapters, more than serving.maxLoras "
                f"({self.max_loras or f'default {DEFAULT_MAX_LORAS}'})"
            )
        return self


class ModelReleaseSpec(ApiModel):
    """What to release, how to compress it, and how to serve it."""

    rules = (
        Rule(
            "!has(self.serving) || self.serving.tensorParallelSize <= (self.gpus > 1 ? self.gpus : 1)",
            "serving.tensorParallelSize must not exceed gpus",
            "serving.tensorParallelSize",
        ),
    )

    model_ref: ModelRef
    """The model to release."""
    eval_suite_ref: LocalRef | None = None
    """An EvalSuite whose gate must pass before the release serves. When that suite's `modelRef` is
    this release, it evaluates the compressed candidate: the release compresses first, the suite
    evaluates what will be served, and the gate applies to that result (condition GatePassed: Unknown
    with GatePending while it runs). Any other suite (e.g. of the uncompressed model) must have
    passed before compression starts."""
    compression: Compression = Field(default_factory=Compression)
    """Compression."""
    serving: Serving = Field(default_factory=Serving)
    """Serving."""
    gpus: int = Field(default=0, ge=0, le=64)
    """GPUs per serving replica (0 serves on the CPU build)."""
    compute: Compute = Field(default_factory=Compute)
    """Pod resources and placement."""
    tracking: Tracking = Field(default_factory=Tracking)
    """Experiment tracking (MLflow experiment, tags, off)."""

    @model_validator(mode="after")
    def _checks(self) -> ModelReleaseSpec:
        if self.serving.tensor_parallel_size > max(self.gpus, 1):
            raise ValueError(
                f"serving.tensorParallelSize ({self.serving.tensor_parallel_size}) exceeds gpus ({self.gpus})"
            )
        return self


class ModelRelease(ApiModel):
    """A compressed, evaluated model served by vLLM."""

    api_version: Literal["lmforge.io/v1alpha1"] = "lmforge.io/v1alpha1"
    """`lmforge.io/v1alpha1`."""
    kind: Literal["ModelRelease"] = "ModelRelease"
    """`ModelRelease`."""
    metadata: ObjectMeta
    """Standard object metadata."""
    spec: ModelReleaseSpec
    """Desired release."""
    status: Status | None = None
    """Observed state, written by LMForge."""
