"""The values reconcilers consume and produce. Plain frozen dataclasses: no I/O, no clients."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from lmforge.api.contract import ProgressRecord, StageName, StageSpec
from lmforge.api.kinds import Resource
from lmforge.api.meta import SecretKeyRef, Status
from lmforge.api.scheduling import Compute
from lmforge.operator.reconcile.policy import Allowlists

if TYPE_CHECKING:  # analysis.py imports gate.py, which imports this module
    from lmforge.operator.reconcile.analysis import CanaryMetrics


class RunState(StrEnum):
    """What a backend observed of a stage run."""

    PENDING = "Pending"
    """Created, not started (pods unscheduled, process queued)."""
    RUNNING = "Running"
    """Started and not finished."""
    SUCCEEDED = "Succeeded"
    """Exited 0 (a job), its `result.json` written."""
    FAILED = "Failed"
    """Failed for good (the backend's retries, if any, are exhausted)."""
    READY = "Ready"
    """A long-running run (serving) that answers."""


@dataclass(frozen=True)
class StageRun:
    """*What* should run — never *how*. Backends turn it into Jobs/Deployments or local processes."""

    name: str
    """Child name (DNS-1123, ≤ 52 chars so Indexed Job pod hostnames fit in 63)."""
    stage: StageName
    resource_kind: str
    resource_name: str
    run_id: str
    """Stable for a given spec and inputs: the same run is resumed, never restarted from scratch."""
    spec: StageSpec
    """The `--spec` file content."""
    compute: Compute
    nodes: int = 1
    """Pods (multi-node training: Indexed Job completions)."""
    nproc_per_node: int = 1
    """Processes per pod (one per GPU; on CPU from `compute.processes`)."""
    gpus_per_node: int = 0
    workers: int = 1
    """Independent indexed workers of a data-parallel stage (Dataset `workers`)."""
    long_running: bool = False
    """Serving: runs until deleted; READY instead of SUCCEEDED."""
    port: int | None = None
    """Serving port."""
    replicas: int = 1
    """Serving replicas."""
    user_namespaces: bool = False
    """The stage runs model-written code in a bubblewrap sandbox (an EvalSuite's code tasks), which
    needs user namespaces in its pod."""
    metrics_port: int | None = None
    """The resource's own port for the stage's Prometheus exporter (PretrainJob `spec.metrics.port`);
    None: the backend's default."""
    secret_env: dict[str, SecretKeyRef] = field(default_factory=dict)
    """Environment the stage reads from Secrets beyond `compute.secretEnv`: the serving API key
    (`LMFORGE_API_KEY`) and an evaluated endpoint's key (`LMFORGE_ENDPOINT_API_KEY`)."""

    @property
    def resource_key(self) -> str:
        return f"{self.resource_kind}/{self.resource_name}"

    @property
    def distributed(self) -> bool:
        return self.nodes > 1 or self.nproc_per_node > 1


@dataclass(frozen=True)
class ObservedRun:
    """A backend's report of one stage run, plus what the store says about it."""

    name: str
    run_id: str
    state: RunState
    stage: StageName | None = None
    attempts: int = 1
    message: str | None = None
    """Failure reason (the stage's `lmforge: error:` line) or a status note."""
    retryable: bool = True
    progress: ProgressRecord | None = None
    """Latest progress record."""
    result: ProgressRecord | None = None
    """The `result` record, once written."""
    endpoint: str | None = None
    """Serving URL, when READY."""
    run_endpoint: str | None = None
    """Serving, READY: the URL of this run's servers alone when `endpoint` is shared by every
    version of the release (the operator: the per-run Service beside the release's); None when
    `endpoint` already reaches this run only (`lmforge run`: a port per server). A smoke suite and a
    rollout's URLs use it."""
    adapters: dict[str, str] | None = None
    """Serving, READY: the LoRA adapters the server answers to (name → the artifact URI loaded under
    it), as its `/v1/models` lists them. None when the backend does not change a running server's
    adapters (the operator: a changed set rolls the Deployment's pods)."""
    adapter_errors: dict[str, tuple[str, str]] = field(default_factory=dict)
    """Serving: adapters the server refused to load, name → (artifact URI, why)."""


@dataclass(frozen=True)
class InputState:
    """A referenced resource as the referrer sees it."""

    kind: str
    name: str
    exists: bool
    status: Status | None = None
    spec: dict[str, Any] | None = None

    @property
    def key(self) -> str:
        return f"{self.kind}/{self.name}"


@dataclass(frozen=True)
class Observed:
    """Everything a reconciler may look at."""

    resource: Resource | None
    """The parsed resource; None when its spec is invalid (see `invalid`)."""
    kind: str
    name: str
    generation: int | None
    status: Status
    store: str
    """Root URI of the artifact store."""
    inputs: dict[str, InputState] = field(default_factory=dict)
    """Referenced resources by `Kind/name`."""
    runs: dict[str, ObservedRun] = field(default_factory=dict)
    """Stage runs owned by this resource, by run name."""
    invalid: str | None = None
    """Why the spec failed model validation (field path and message)."""
    base_dir: str | None = None
    """Directory the manifest came from (embedded runner), for relative paths."""
    missing_secrets: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Run name → the Secrets its pods need that the backend could not find, each described with the
    field that names it. Only runs not created yet are checked (a created pod reports its own)."""
    secret_waits: int = 0
    """How many looks in a row already found a Secret missing (drives the retry backoff)."""
    store_error: str | None = None
    """Why the backend could not read the store (its records of the runs), or None: nothing is
    decided from a store that cannot be read; the resource says so and is looked at again."""
    serving_allowed: bool = True
    """False when the runner was told not to serve (`lmforge run --no-serve`): a release then ends
    Succeeded once compressed, without changing its spec (so its run id, and its outputs, stay)."""
    allowlists: Allowlists = field(default_factory=Allowlists)
    """Images, ServiceAccounts and Secrets a resource may name (the operator's settings); a spec
    naming anything else is refused as InvalidSpec."""
    conflicts: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Run name → objects of that name which exist but are not this resource's (created by someone
    else, or left by a deleted resource of the same name): never adopted, the run waits."""
    traffic_split: bool = False
    """The backend can give a release's new version a share of live traffic (`Decision.traffic`):
    the operator. False under `lmforge run`, which is blue-green whatever `serving.canary` says."""
    canary_metrics: CanaryMetrics | None = None
    """The canary's and the stable's figures over the step just ended (the operator asks Prometheus
    when a canary step is due, see `canary.metrics_due`); None when the backend has no metrics source,
    and a step then passes on time alone."""


@dataclass(frozen=True)
class AdapterChange:
    """Adapters to unload from, then load into, one running server (a backend calls vLLM's
    `/v1/unload_lora_adapter` and `/v1/load_lora_adapter`)."""

    run: str
    """The serving run."""
    load: dict[str, str] = field(default_factory=dict)
    """Adapter name (model name in the API) → adapter artifact URI."""
    unload: tuple[str, ...] = ()
    """Adapter names, unloaded first (a changed artifact: unloaded, then loaded again)."""


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event (or a line in the embedded runner's log)."""

    type: str
    """`Normal` or `Warning`."""
    reason: str
    message: str


@dataclass(frozen=True)
class Decision:
    """A reconciler's output."""

    status: Status
    runs: list[StageRun] = field(default_factory=list)
    """Runs that must exist (create when missing; never recreate a finished one: it is not listed)."""
    delete: list[str] = field(default_factory=list)
    """Names of runs to remove (superseded by a newer spec, or a replaced release)."""
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None
    """Look again after this many seconds even without a watch event (progress polling)."""
    adapters: list[AdapterChange] = field(default_factory=list)
    """LoRA adapters to load into or unload from running servers (backends that report
    `ObservedRun.adapters`)."""
    traffic: dict[str, int] = field(default_factory=dict)
    """A release: serving run name → its share of live traffic in percent (summing to 100; a run
    at 0 is Ready but takes none, e.g. while smoke-tested). Empty: no change. Backends that split
    traffic (`Observed.traffic_split`) carry it out: replica ratio or HTTPRoute weights."""
