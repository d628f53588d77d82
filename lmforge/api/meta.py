"""Shared wire conventions for every LMForge kind: camelCase on the wire, snake_case in Python,
unknown fields rejected, and Kubernetes-shaped metadata, conditions and status.

Every field is documented by the docstring under it; those docstrings become the CRD descriptions
(`kubectl explain`) and the validation messages' vocabulary, so they are written for users.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

GROUP = "lmforge.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

_DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@dataclass(frozen=True)
class Rule:
    """A cross-field rule of a model, declared once beside its validator: the model's validator
    enforces it in Python (with the values in its message), and the CRD carries `cel` as an
    `x-kubernetes-validations` entry, so the API server rejects the same spec at `kubectl apply`.

    `cel` sees the object the rule is declared on as `self`, with wire names and the schema's
    defaults applied; optional fields are tested with `has()`. `field` is the wire path, relative to
    that object, of the field the rule names (the CRD's `fieldPath`; "" for the object itself).
    """

    cel: str
    message: str
    field: str = ""

    def validation(self) -> dict[str, str]:
        """The rule as one `x-kubernetes-validations` entry."""
        out = {"rule": self.cel, "message": self.message}
        if self.field:
            out["fieldPath"] = f".{self.field}"
        return out


def _cel_schema(schema: dict[str, Any], cls: type[Any]) -> None:
    """pydantic `json_schema_extra`: a model's `rules` become its schema's `x-kubernetes-validations`."""
    rules: tuple[Rule, ...] = cls.__dict__.get("rules", ())
    if rules:
        schema["x-kubernetes-validations"] = [r.validation() for r in rules]


class ApiModel(BaseModel):
    """Base for every wire object: camelCase aliases, strict about unknown fields.

    `extra="forbid"` is what makes a typo such as `seqLenght` an error naming the field instead
    of a silently ignored setting. A model's cross-field rules are listed in `rules` (see `Rule`).
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=True,
        validate_assignment=False,
        json_schema_extra=_cel_schema,
    )

    rules: ClassVar[tuple[Rule, ...]] = ()
    """Cross-field rules checked by this model's validator, also enforced by the API server as CEL."""

    def wire(self) -> dict[str, Any]:
        """The object as it travels over the wire (camelCase, no unset optional fields)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class FreeForm(BaseModel):
    """An object whose keys we do not model (labels, extra DeepSpeed keys)."""

    model_config = ConfigDict(extra="allow")


class ObjectMeta(ApiModel):
    """The subset of Kubernetes `metav1.ObjectMeta` that LMForge reads."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", use_attribute_docstrings=True
    )

    name: str = Field(min_length=1, max_length=63)
    """Name of the resource, unique per kind in its namespace; a DNS-1123 label because it names
    Jobs, Services and store prefixes."""
    namespace: str | None = None
    """Namespace of the resource; the embedded runner ignores it."""
    labels: dict[str, str] = Field(default_factory=dict)
    """Labels, copied onto every child object the operator creates."""
    annotations: dict[str, str] = Field(default_factory=dict)
    """Annotations."""
    generation: int | None = None
    """Set by the apiserver; increases on every spec change."""
    uid: str | None = None
    """Set by the apiserver; used for owner references."""

    @field_validator("name")
    @classmethod
    def _dns_label(cls, value: str) -> str:
        if not _DNS1123.match(value):
            raise ValueError(
                "must be a DNS-1123 label: lowercase letters, digits and '-', starting and ending "
                "with a letter or digit"
            )
        return value


class LocalRef(ApiModel):
    """A reference to another LMForge resource in the same namespace."""

    name: str = Field(min_length=1, max_length=63)
    """Name of the referenced resource."""


class ModelKind(StrEnum):
    """Kinds that produce a model artifact."""

    PRETRAIN_JOB = "PretrainJob"
    ALIGNMENT_JOB = "AlignmentJob"
    MODEL_RELEASE = "ModelRelease"


class ModelRef(ApiModel):
    """Where a model comes from: another resource's output, or a Hugging Face-format directory in
    the artifact store (for example an open checkpoint a user uploaded)."""

    rules = (
        Rule("has(self.name) != has(self.uri)", "set exactly one of `name` (with `kind`) or `uri`", "name"),
        Rule("!has(self.name) || has(self.kind)", "`kind` is required with `name`", "kind"),
    )

    kind: ModelKind | None = None
    """Kind of the referenced resource; required with `name`."""
    name: str | None = Field(default=None, min_length=1, max_length=63)
    """Name of the referenced resource."""
    uri: str | None = Field(default=None, min_length=1)
    """A Hugging Face-format model directory (`s3://…`, `file://…` or a path) instead of a resource."""

    def model_post_init(self, _context: Any) -> None:
        has_ref = self.name is not None
        if has_ref == (self.uri is not None):
            raise ValueError("set exactly one of `name` (with `kind`) or `uri`")
        if has_ref and self.kind is None:
            raise ValueError("`kind` is required with `name` (PretrainJob, AlignmentJob or ModelRelease)")


class SecretKeyRef(ApiModel):
    """A key in a Kubernetes Secret (in the embedded runner: an environment variable of that name)."""

    name: str = Field(min_length=1)
    """Name of the Secret."""
    key: str = Field(min_length=1)
    """Key in the Secret."""


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class ConditionType(StrEnum):
    """Condition types. `Ready` is on every kind; the others where they make sense."""

    READY = "Ready"
    """The resource's output is available (artifacts published, or the release serving)."""
    SUCCEEDED = "Succeeded"
    """The stage ran to completion (True) or failed for good (False)."""
    INPUTS_READY = "InputsReady"
    """Every referenced resource is Ready."""
    GATE_PASSED = "GatePassed"
    """EvalSuite: every threshold held. ModelRelease: the referenced gate passed."""


class Reason(StrEnum):
    """Machine-readable reasons for conditions, documented once here."""

    WAITING_FOR_INPUT = "WaitingForInput"
    """A referenced resource is not Ready yet."""
    WAITING_FOR_SECRET = "WaitingForSecret"
    """A Secret the stage's pods need (credentials, API key) does not exist yet, or lacks the key;
    the message names it and the field that refers to it. Looked for again with backoff."""
    INPUT_FAILED = "InputFailed"
    """A referenced resource failed; the message names it."""
    STORE_UNAVAILABLE = "StoreUnavailable"
    """The operator cannot read the artifact store (unreachable, or its credentials are missing or
    wrong); Ready is Unknown, the message names the store URI, the error and the fix. Retried."""
    INVALID_SPEC = "InvalidSpec"
    """The spec passed the CRD schema but not the models, or names an image, ServiceAccount or
    Secret the operator's allow-lists do not allow; the message names the field."""
    NAME_CONFLICT = "NameConflict"
    """An object a stage run needs (its Job, ConfigMap, Service...) already exists under that name and
    is not this resource's (someone else's, or left by a deleted resource of the same name): LMForge
    never adopts it. The message names it; the run starts once it is gone. Looked at again with backoff."""
    PENDING = "Pending"
    """Accepted; the stage has not started."""
    RUNNING = "Running"
    """The stage is running."""
    COMPLETED = "Completed"
    """The stage finished and published its artifacts."""
    STAGE_FAILED = "StageFailed"
    """The stage process failed; the message carries its one-line reason."""
    RETRYING = "Retrying"
    """A stage attempt failed and will be retried (resuming from its checkpoint)."""
    GATE_PASSED = "GatePassed"
    """All thresholds held."""
    GATE_FAILED = "GateFailed"
    """At least one threshold did not hold; the message lists which."""
    GATE_PENDING = "GatePending"
    """The referenced EvalSuite has not finished."""
    DEPLOYING = "Deploying"
    """The serving Deployment is rolling out."""
    SERVING = "Serving"
    """The model answers on its endpoint."""
    SMOKE_TESTING = "SmokeTesting"
    """A changed release's new server is Ready beside the old one, which keeps serving, while the
    `serving.smokeEvalSuiteRef` suite evaluates the new one; the message gives both URLs."""
    CANARY = "Canary"
    """A changed release's new server serves a share of live traffic beside the stable one (Ready
    stays True); the message says which run serves which share at which URL and when the step is
    judged. `status.rollout` has the step and weight."""
    CANARY_STEP = "CanaryStep"
    """Event: a canary step began (the new version's share and why the previous step passed)."""
    PROMOTED = "Promoted"
    """The new version passed its smoke evaluation (and, with a canary, every step) and took over;
    the old server was stopped."""
    ROLLED_BACK = "RolledBack"
    """The new version failed its smoke evaluation or a canary step's metrics (error rate, time to
    first token): its server was stopped, the old one keeps serving with all traffic (Ready stays
    True); the message names the failed thresholds or figures. Change the spec to try again."""
    ADAPTERS_CHANGED = "AdaptersChanged"
    """Event: LoRA adapters are loaded into (or unloaded from) the running server because
    `serving.loraAdapters` or an adapter's AlignmentJob changed; the message names them."""
    ADAPTER_FAILED = "AdapterFailed"
    """Event: the running server refused to load an adapter (the message says why); it is not tried
    again until the adapter's artifact changes, and the Ready message names it."""


class Phase(StrEnum):
    """Coarse life-cycle phase, shown by `kubectl get` and `lmforge status`."""

    PENDING = "Pending"
    WAITING = "Waiting"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SERVING = "Serving"


class Condition(ApiModel):
    """Shaped like Kubernetes `metav1.Condition`."""

    type: str = Field(min_length=1, max_length=316)
    """Condition type, one of the `ConditionType` values."""
    status: ConditionStatus
    """True, False or Unknown."""
    reason: str = Field(min_length=1, max_length=1024, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
    """CamelCase machine-readable reason, one of the `Reason` values."""
    message: str = Field(default="", max_length=32768)
    """Human-readable detail."""
    last_transition_time: str = Field(default_factory=lambda: now_rfc3339())
    """When the status last changed (RFC 3339)."""
    observed_generation: int | None = Field(default=None, ge=0)
    """The `metadata.generation` this condition was computed for."""


class Progress(ApiModel):
    """Where the running stage is, relayed from its progress records."""

    stage: str | None = None
    """Name of the stage that reported."""
    step: int = Field(default=0, ge=0)
    """Steps (or documents, or items) done."""
    total: int | None = Field(default=None, ge=0)
    """Steps expected in all; unknown when absent."""
    percent: float | None = Field(default=None, ge=0, le=100)
    """`100 * step / total`."""
    eta_seconds: float | None = Field(default=None, ge=0)
    """Estimated seconds to completion."""
    message: str | None = None
    """Last human-readable message."""
    updated: str | None = None
    """When the last record arrived (RFC 3339)."""


class RolloutState(StrEnum):
    SMOKE_TESTING = "SmokeTesting"
    CANARY = "Canary"
    """The new version serves a share of live traffic (`weight`) at canary step `step`."""
    PROMOTED = "Promoted"
    ROLLED_BACK = "RolledBack"


class Rollout(ApiModel):
    """ModelRelease: the latest switch from the version serving to a new one (blue-green, or a
    canary by steps: `serving.canary`)."""

    state: RolloutState
    """Where the switch stands."""
    stable: str
    """Run id of the version that was serving when the switch began."""
    stable_endpoint: str | None = None
    """Its URL."""
    candidate: str
    """Run id of the new version."""
    candidate_endpoint: str | None = None
    """The new server's URL (beside the stable one until it takes over)."""
    message: str = ""
    """Why it stands there (the smoke suite's verdict, the canary step's figures)."""
    step: int | None = Field(default=None, ge=0)
    """Canary: index of the current step in `serving.canary.steps`."""
    weight: int | None = Field(default=None, ge=0, le=100)
    """Canary: the new version's share of traffic now, in percent."""
    step_started: str | None = None
    """Canary: when the current step began (RFC 3339); it is judged `stepSeconds` later."""


class Status(ApiModel):
    """Common status of every kind; written by the operator or the embedded runner only."""

    phase: Phase = Phase.PENDING
    """Coarse life-cycle phase."""
    conditions: list[Condition] = Field(default_factory=list)
    """Latest observations; `Ready` is always present once reconciled."""
    observed_generation: int | None = Field(default=None, ge=0)
    """The `metadata.generation` the status describes."""
    progress: Progress | None = None
    """Progress of the running stage."""
    metrics: dict[str, float] = Field(default_factory=dict)
    """Key metrics (loss, tokens/s, accuracies…), latest values."""
    artifacts: dict[str, str] = Field(default_factory=dict)
    """Produced artifacts: name → URI of a complete artifact (its manifest written)."""
    run_id: str | None = None
    """Identifier of the stage run that produced (or is producing) the artifacts."""
    attempts: int = Field(default=0, ge=0)
    """How many times the stage has been started for this generation."""
    started_at: str | None = None
    """When the stage first started (RFC 3339)."""
    completed_at: str | None = None
    """When the stage finished (RFC 3339)."""
    lineage: list[str] = Field(default_factory=list)
    """Upstream resources and artifacts this output was made from, nearest first (`Kind/name`)."""
    endpoint: str | None = None
    """ModelRelease: the OpenAI-compatible URL of the served model."""
    adapters: list[str] = Field(default_factory=list)
    """ModelRelease: the LoRA adapters its server answers to (model names in the API), as the server
    reports them (the operator: the set its Deployment's pod template carries, which its pods are
    rolled onto)."""
    rollout: Rollout | None = None
    """ModelRelease: the latest switch between versions (see `serving.smokeEvalSuiteRef`)."""
    key_metric: str | None = None
    """The one figure the printer column shows (e.g. `loss=2.31`)."""

    def condition(self, type_: str) -> Condition | None:
        """The condition of that type, if present."""
        return next((c for c in self.conditions if c.type == type_), None)


def now_rfc3339() -> str:
    """Current UTC time in the RFC 3339 form Kubernetes uses (second precision, `Z`)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
