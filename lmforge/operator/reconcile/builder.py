"""The Decision a reconcile pass accumulates, and the small rules every kind shares (progress,
the printer column's figure, holding back a run whose Secret is missing)."""

from __future__ import annotations

from lmforge.api.contract import ProgressRecord
from lmforge.api.kinds import Resource
from lmforge.api.meta import ConditionType, Phase, Progress, Reason
from lmforge.operator.reconcile.conditions import set_condition
from lmforge.operator.reconcile.types import AdapterChange, Decision, Event, Observed, ObservedRun, StageRun

POLL_SECONDS = 10.0
"""Re-look at a running resource this often to relay progress from the store."""
SECRET_RETRY_SECONDS = (1.0, 60.0)
"""First and longest wait before looking for a missing Secret again (doubling in between):
Secrets cannot be watched (the operator may `get` them, never list them), so it polls."""


def secret_backoff(waits: int) -> float:
    """Seconds until the next look for a missing Secret, after `waits` looks that found it missing."""
    first, longest = SECRET_RETRY_SECONDS
    return min(longest, first * 2 ** min(waits, 16))


class Builder:
    """Accumulates a Decision while keeping the reconcile function readable."""

    def __init__(self, obs: Observed, now: str) -> None:
        self.obs = obs
        self.now = now
        self.status = obs.status.model_copy(deep=True)
        self.status.observed_generation = obs.generation
        self.runs: list[StageRun] = []
        self.delete: list[str] = []
        self.events: list[Event] = []
        self.requeue: float | None = None
        self.adapters: list[AdapterChange] = []
        self.traffic: dict[str, int] = {}

    def cond(self, type_: ConditionType, value: bool | None, reason: Reason, message: str = "") -> None:
        set_condition(self.status, type_.value, value, reason.value, message, self.obs.generation, self.now)

    def phase(self, phase: Phase, reason: Reason, message: str, warning: bool = False) -> None:
        if self.obs.status.phase is not phase or self._reason_changed(reason):
            self.events.append(Event("Warning" if warning else "Normal", reason.value, message))
        self.status.phase = phase

    def _reason_changed(self, reason: Reason) -> bool:
        old = self.obs.status.condition(ConditionType.READY.value)
        return old is None or old.reason != reason.value

    def decision(self) -> Decision:
        if self.obs.resource is not None:
            self.status.key_metric = key_metric(self.obs.resource, self.status.metrics) or self.status.key_metric
        return Decision(
            status=self.status,
            runs=self.runs,
            delete=self.delete,
            events=self.events,
            requeue_after=self.requeue,
            adapters=self.adapters,
            traffic=self.traffic,
        )


def progress_of(record: ProgressRecord | None) -> Progress | None:
    if record is None:
        return None
    percent = None
    if record.total:
        percent = round(min(100.0, 100.0 * record.step / record.total), 1)
    return Progress(
        stage=record.stage.value,
        step=record.step,
        total=record.total,
        percent=percent,
        eta_seconds=record.eta_seconds,
        message=record.message,
        updated=record.ts,
    )


def key_metric(resource: Resource, metrics: dict[str, float]) -> str | None:
    """The one figure `kubectl get` shows for this kind."""
    for name in ("gate_passed", "loss", "tokens", "size_ratio", "perplexity_after"):
        if name in metrics:
            value = metrics[name]
            if name == "gate_passed":
                return "gate=pass" if value >= 1 else "gate=fail"
            return (
                f"{name}={value:.4g}" if isinstance(value, float) and not value.is_integer() else f"{name}={int(value)}"
            )
    return None


def waits_for_secrets(b: Builder, run: StageRun, seen: ObservedRun | None, ready: bool = False) -> bool:
    """Hold back a run that does not exist yet while an object of one of its children's names is not
    this resource's (applying over it would adopt it), or while a Secret its pods need is missing (a
    pod created now would only sit in CreateContainerConfigError). True when it must wait. `ready`:
    what Ready says meanwhile (True while an older release keeps serving)."""
    foreign = b.obs.conflicts.get(run.name) if seen is None else None
    if foreign:
        message = (
            f"{run.stage.value} stage cannot start: "
            + "; ".join(foreign)
            + " already exist(s) and is not this resource's; LMForge does not adopt it: delete or rename it"
        )
        b.cond(ConditionType.READY, ready, Reason.NAME_CONFLICT, message)
        b.phase(Phase.FAILED, Reason.NAME_CONFLICT, message, warning=True)
        b.requeue = secret_backoff(b.obs.secret_waits)
        return True
    missing = b.obs.missing_secrets.get(run.name) if seen is None else None
    if not missing:
        return False
    message = f"{run.stage.value} stage waits for " + "; ".join(missing)
    b.cond(ConditionType.READY, ready, Reason.WAITING_FOR_SECRET, message)
    b.phase(Phase.WAITING, Reason.WAITING_FOR_SECRET, message, warning=True)
    b.requeue = secret_backoff(b.obs.secret_waits)
    return True
