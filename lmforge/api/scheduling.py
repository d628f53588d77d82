"""Where and with what a stage's pods run: Kubernetes-shaped resources, tolerations, node selection
and gang scheduling. The embedded runner reads only `processes` and `threads` from here."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from lmforge.api.meta import ApiModel, FreeForm, SecretKeyRef

_QUANTITY = r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"


class ResourceList(ApiModel):
    """Compute resources, as Kubernetes quantities."""

    cpu: str | None = Field(default=None, pattern=_QUANTITY)
    """CPU cores, e.g. `8` or `500m`."""
    memory: str | None = Field(default=None, pattern=_QUANTITY)
    """Memory, e.g. `64Gi`."""
    ephemeral_storage: str | None = Field(default=None, pattern=_QUANTITY)
    """Local scratch disk, e.g. `100Gi`."""


class Resources(ApiModel):
    """Requests and limits of each pod (GPUs are set by `gpusPerNode`, not here)."""

    requests: ResourceList = Field(default_factory=ResourceList)
    """Minimum guaranteed resources."""
    limits: ResourceList = Field(default_factory=ResourceList)
    """Maximum resources."""


class TolerationOperator(StrEnum):
    EXISTS = "Exists"
    EQUAL = "Equal"


class TaintEffect(StrEnum):
    NO_SCHEDULE = "NoSchedule"
    PREFER_NO_SCHEDULE = "PreferNoSchedule"
    NO_EXECUTE = "NoExecute"


class Toleration(ApiModel):
    """A Kubernetes toleration, as in a pod spec."""

    key: str | None = None
    """Taint key; empty with `Exists` tolerates everything."""
    operator: TolerationOperator = TolerationOperator.EQUAL
    """`Equal` or `Exists`."""
    value: str | None = None
    """Taint value for `Equal`."""
    effect: TaintEffect | None = None
    """Effect to tolerate; empty tolerates all effects."""
    toleration_seconds: int | None = Field(default=None, ge=0)
    """For `NoExecute`: how long the pod stays after the taint appears."""


class GangScheduler(StrEnum):
    """How multi-node pods are admitted together, so a job never holds half its GPUs."""

    NONE = "none"
    KUEUE = "kueue"
    VOLCANO = "volcano"


class Scheduling(ApiModel):
    """Gang scheduling for multi-node jobs."""

    gang: GangScheduler = GangScheduler.NONE
    """`kueue` (queue-name label, Job created suspended) or `volcano` (scheduler name + PodGroup)."""
    queue_name: str | None = None
    """Kueue LocalQueue or Volcano queue name."""
    priority_class_name: str | None = None
    """Kubernetes PriorityClass of the pods."""


class Compute(ApiModel):
    """Pod placement and size for a stage, plus how many local processes the embedded runner uses."""

    resources: Resources = Field(default_factory=Resources)
    """CPU/memory requests and limits of each pod."""
    node_selector: dict[str, str] = Field(default_factory=dict)
    """Node labels the pods must match, e.g. `nvidia.com/gpu.product: H100-SXM`."""
    tolerations: list[Toleration] = Field(default_factory=list)
    """Tolerations added to the pods (GPU nodes are usually tainted)."""
    affinity: FreeForm | None = None
    """A Kubernetes `affinity` object, passed through to the pod spec unchanged."""
    scheduling: Scheduling = Field(default_factory=Scheduling)
    """Gang scheduling options."""
    image: str | None = None
    """Trainer image override; defaults to the operator's configured trainer image."""
    service_account_name: str | None = None
    """ServiceAccount the pods run as."""
    s3_credentials_secret: str | None = None
    """Secret with `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` (and optionally `AWS_ENDPOINT_URL`)
    for the artifact store; defaults to the operator's."""
    shm_size: str = Field(default="8Gi", pattern=_QUANTITY)
    """Size of the memory-backed `/dev/shm` (data loaders and NCCL need more than the default 64Mi)."""
    processes: int | None = Field(default=None, ge=1, le=256)
    """Embedded runner: processes to start; default picks by measurement, capped by the cores."""
    threads: int | None = Field(default=None, ge=1, le=256)
    """Embedded runner: torch threads per process; default is cores / processes."""
    backoff_limit: int = Field(default=3, ge=0, le=100)
    """How many times a failed attempt is retried (each retry resumes from the last checkpoint)."""
    scratch_size: str = Field(default="50Gi", pattern=_QUANTITY)
    """Size limit of the pod's writable scratch space (`/tmp`: downloads, caches; the root file system
    is read-only). A pod that writes more is evicted and retried."""
    termination_grace_seconds: int = Field(default=300, ge=10, le=3600)
    """Seconds a stopped pod (preemption, drain) gets between SIGTERM and SIGKILL: a training stage
    saves a checkpoint of its current step in that time."""
    active_deadline_seconds: int | None = Field(default=None, ge=60)
    """Longest a stage run may take in all, retries included (the Job's `activeDeadlineSeconds`)."""
    env: dict[str, str] = Field(default_factory=dict)
    """Extra environment variables for the stage processes."""
    secret_env: dict[str, SecretKeyRef] = Field(default_factory=dict)
    """Extra environment variables taken from Secrets (embedded runner: from its own environment)."""
