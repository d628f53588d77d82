"""The reconciler: one pure function for all five kinds.

Policy on spec changes: a stage run's identity (`run_id`) is a hash of the spec and the inputs'
artifacts. A changed spec (new generation) or changed upstream output therefore starts a *new* run
under a new output prefix; the previous run's children are deleted (a serving release keeps its old
run until the new one is Ready). An unchanged spec maps to the same run, which is recognised as done
from its `result.json` and never redone — the embedded runner's "second run does nothing" and the
operator's "restart duplicates nothing" are the same rule.
"""

from __future__ import annotations

from lmforge.api.contract import STAGES_OF_KIND, InputArtifacts, ProgressRecord, StageName
from lmforge.api.evalsuite import EvalSuite
from lmforge.api.kinds import Resource, references
from lmforge.api.meta import ConditionType, Phase, Progress, Reason, now_rfc3339
from lmforge.api.release import ModelRelease
from lmforge.operator.reconcile.conditions import is_false, is_true, set_condition
from lmforge.operator.reconcile.policy import violations
from lmforge.operator.reconcile.runs import run_id, run_name, stage_output, stage_run
from lmforge.operator.reconcile.types import Decision, Event, Observed, ObservedRun, RunState, StageRun

POLL_SECONDS = 10.0
"""Re-look at a running resource this often to relay progress from the store."""
STORE_RETRY_SECONDS = 15.0
"""Wait before reading an unavailable store again (each look logs one line, no traceback)."""
SECRET_RETRY_SECONDS = (1.0, 60.0)
"""First and longest wait before looking for a missing Secret again (doubling in between):
Secrets cannot be watched (the operator may `get` them, never list them), so it polls."""


def secret_backoff(waits: int) -> float:
    """Seconds until the next look for a missing Secret, after `waits` looks that found it missing."""
    first, longest = SECRET_RETRY_SECONDS
    return min(longest, first * 2 ** min(waits, 16))


def _resolve(resource: Resource, obs: Observed) -> tuple[dict[str, InputArtifacts], list[str], list[str]]:
    """(resolved inputs, what we wait for, what failed)."""
    resolved: dict[str, InputArtifacts] = {}
    waiting: list[str] = []
    failed: list[str] = []
    for ref in references(resource):
        key = f"{ref.kind}/{ref.name}"
        state = obs.inputs.get(key)
        if state is None or not state.exists:
            waiting.append(f"{key} ({ref.field}) does not exist yet")
            continue
        if not ref.needs_ready:
            resolved[key] = InputArtifacts(kind=ref.kind, name=ref.name, spec=state.spec)
            continue
        st = state.status
        if st is not None and (st.phase is Phase.FAILED or is_false(st, ConditionType.SUCCEEDED)):
            cond = st.condition(ConditionType.READY)
            failed.append(f"{key} ({ref.field}) failed: {cond.message if cond else 'no reason given'}")
        elif st is None or not is_true(st, ConditionType.READY):
            waiting.append(f"{key} ({ref.field}) is not Ready")
        else:
            artifacts = dict(st.artifacts)
            if st.endpoint:
                artifacts["endpoint"] = st.endpoint
            resolved[key] = InputArtifacts(kind=ref.kind, name=ref.name, artifacts=artifacts,
                                           metrics=dict(st.metrics), lineage=list(st.lineage), spec=state.spec)
    return resolved, waiting, failed


def expected_runs(obs: Observed) -> list[tuple[str, StageName, str]]:
    """(run name, stage, output prefix) of every run the current spec and inputs could have.

    The I/O layer observes these by name (backend state) and prefix (`result.json`,
    `progress.json`) before calling `reconcile`.
    """
    if obs.resource is None:
        return []
    resolved, waiting, failed = _resolve(obs.resource, obs)
    if waiting or failed:
        return []
    rid = run_id(obs.resource, resolved)
    return [(run_name(obs.resource, s, rid), s, stage_output(obs.resource, s, rid))
            for s in STAGES_OF_KIND[obs.resource.kind]]


class _Builder:
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
            self.status.key_metric = _key_metric(self.obs.resource, self.status.metrics) or self.status.key_metric
        return Decision(status=self.status, runs=self.runs, delete=self.delete, events=self.events,
                        requeue_after=self.requeue)


def _progress(record: ProgressRecord | None) -> Progress | None:
    if record is None:
        return None
    percent = None
    if record.total:
        percent = round(min(100.0, 100.0 * record.step / record.total), 1)
    return Progress(stage=record.stage.value, step=record.step, total=record.total, percent=percent,
                    eta_seconds=record.eta_seconds, message=record.message, updated=record.ts)


def _key_metric(resource: Resource, metrics: dict[str, float]) -> str | None:
    """The one figure `kubectl get` shows for this kind."""
    for name in ("gate_passed", "loss", "tokens", "size_ratio", "perplexity_after"):
        if name in metrics:
            value = metrics[name]
            if name == "gate_passed":
                return "gate=pass" if value >= 1 else "gate=fail"
            return f"{name}={value:.4g}" if isinstance(value, float) and not value.is_integer() else f"{name}={int(value)}"
    return None


def _lineage(resolved: dict[str, InputArtifacts]) -> list[str]:
    out: list[str] = []
    for key, inp in resolved.items():
        for item in [key, *inp.lineage]:
            if item not in out:
                out.append(item)
    return out


def _gate(suite: EvalSuite, metrics: dict[str, float]) -> tuple[bool, str]:
    """Evaluate thresholds against the flat `<task>.<metric>` results."""
    lines: list[str] = []
    passed = True
    for threshold in suite.spec.parsed_thresholds():
        name = f"{threshold.task}.{threshold.metric}"
        observed = metrics.get(name)
        if observed is None:
            passed = False
            lines.append(f"{threshold}: metric {name} was not produced")
        else:
            ok = threshold.holds(observed, metrics)  # baseline thresholds read `baseline.*` there
            passed = passed and ok
            lines.append(f"{threshold}: {observed:.4g} {'passed' if ok else 'FAILED'}")
    return passed, "; ".join(lines) or "no thresholds"


def reconcile(obs: Observed, now: str | None = None) -> Decision:
    """Decide the stage runs and status of one resource from what was observed."""
    b = _Builder(obs, now or now_rfc3339())
    resource = obs.resource
    if resource is None:
        message = obs.invalid or "spec is invalid"
        b.cond(ConditionType.READY, False, Reason.INVALID_SPEC, message)
        b.phase(Phase.FAILED, Reason.INVALID_SPEC, message, warning=True)
        return b.decision()
    forbidden = violations(resource, obs.allowlists)
    if forbidden:  # checked before anything else: nothing of a forbidden spec is ever created
        message = "; ".join(forbidden)
        b.cond(ConditionType.READY, False, Reason.INVALID_SPEC, message)
        b.phase(Phase.FAILED, Reason.INVALID_SPEC, message, warning=True)
        return b.decision()

    if obs.store_error is not None:
        message = (f"cannot read the artifact store {obs.store}: {obs.store_error}. Check that it is "
                   "reachable from the operator and the stage pods and that its credentials Secret (the "
                   "chart's store.s3.secretName) exists with valid keys; retrying")
        b.cond(ConditionType.READY, None, Reason.STORE_UNAVAILABLE, message)
        b.phase(Phase.WAITING, Reason.STORE_UNAVAILABLE, message, warning=True)
        b.requeue = STORE_RETRY_SECONDS
        return b.decision()

    resolved, waiting, failed = _resolve(resource, obs)
    if failed:
        message = "; ".join(failed)
        b.cond(ConditionType.INPUTS_READY, False, Reason.INPUT_FAILED, message)
        b.cond(ConditionType.READY, False, Reason.INPUT_FAILED, message)
        b.phase(Phase.FAILED, Reason.INPUT_FAILED, message, warning=True)
        return b.decision()
    if waiting:
        message = "waiting for " + "; ".join(waiting)
        b.cond(ConditionType.INPUTS_READY, False, Reason.WAITING_FOR_INPUT, message)
        b.cond(ConditionType.READY, False, Reason.WAITING_FOR_INPUT, message)
        b.phase(Phase.WAITING, Reason.WAITING_FOR_INPUT, message)
        b.requeue = POLL_SECONDS
        return b.decision()
    b.cond(ConditionType.INPUTS_READY, True, Reason.COMPLETED, "all references are Ready")

    rid = run_id(resource, resolved)
    if b.status.run_id != rid:
        # A new spec or new inputs: a new run. Old outputs no longer describe this spec.
        b.status.run_id = rid
        b.status.artifacts = {}
        b.status.metrics = {}
        b.status.started_at = None
        b.status.completed_at = None
        b.status.endpoint = None if not isinstance(resource, ModelRelease) else b.status.endpoint
    b.status.lineage = _lineage(resolved)
    stages = STAGES_OF_KIND[resource.kind]
    first = stage_run(resource, stages[0], rid, obs.store, resolved, obs.base_dir)
    current = {first.name}
    if isinstance(resource, ModelRelease):
        current.add(run_name(resource, StageName.SERVE, rid))
    # An older release's server stays until the new one is Ready — also while its own Deployment is
    # momentarily not Ready (a pod restarting, a node drained): deleting it then would leave nothing.
    serving_old = [o for o in obs.runs.values()
                   if o.name not in current and o.stage is StageName.SERVE and o.state is not RunState.FAILED]
    b.delete = sorted(o.name for o in obs.runs.values() if o.name not in current and o not in serving_old)

    done = _run_job(b, first, obs.runs.get(first.name))
    if not done:
        return b.decision()
    if isinstance(resource, EvalSuite):
        passed, message = _gate(resource, b.status.metrics)
        b.status.metrics["gate_passed"] = 1.0 if passed else 0.0
        b.cond(ConditionType.GATE_PASSED, passed, Reason.GATE_PASSED if passed else Reason.GATE_FAILED, message)
    if isinstance(resource, ModelRelease):
        _release(b, resource, rid, resolved, serving_old)
    return b.decision()


def _waits_for_secrets(b: _Builder, run: StageRun, seen: ObservedRun | None, ready: bool = False) -> bool:
    """Hold back a run that does not exist yet while an object of one of its children's names is not
    this resource's (applying over it would adopt it), or while a Secret its pods need is missing (a
    pod created now would only sit in CreateContainerConfigError). True when it must wait. `ready`:
    what Ready says meanwhile (True while an older release keeps serving)."""
    foreign = b.obs.conflicts.get(run.name) if seen is None else None
    if foreign:
        message = (f"{run.stage.value} stage cannot start: " + "; ".join(foreign) +
                   " already exist(s) and is not this resource's; LMForge does not adopt it: delete or rename it")
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


def _run_job(b: _Builder, run: StageRun, seen: ObservedRun | None) -> bool:
    """Drive a run-to-completion stage; True once it has succeeded (result written)."""
    if seen is not None and seen.result is not None:
        result = seen.result
        b.status.artifacts.update(result.artifacts)
        b.status.metrics.update(result.metrics)
        b.status.progress = _progress(result) or b.status.progress
        if b.status.progress is not None:
            b.status.progress.percent = 100.0
        b.status.completed_at = b.status.completed_at or result.ts
        b.cond(ConditionType.SUCCEEDED, True, Reason.COMPLETED, f"{run.stage.value} stage completed")
        if STAGES_OF_KIND[run.resource_kind][-1] == run.stage:
            b.cond(ConditionType.READY, True, Reason.COMPLETED, "artifacts published")
            b.phase(Phase.SUCCEEDED, Reason.COMPLETED, f"{run.resource_key} completed")
        return True
    if seen is not None and seen.state is RunState.FAILED:
        message = f"{run.stage.value} stage failed: {seen.message or 'no reason given'}"
        b.cond(ConditionType.SUCCEEDED, False, Reason.STAGE_FAILED, message)
        b.cond(ConditionType.READY, False, Reason.STAGE_FAILED, message)
        b.phase(Phase.FAILED, Reason.STAGE_FAILED, message, warning=True)
        return False
    if _waits_for_secrets(b, run, seen):
        return False
    b.runs.append(run)
    b.status.started_at = b.status.started_at or b.now
    b.status.attempts = seen.attempts if seen else max(b.status.attempts, 0)
    if seen is not None and seen.progress is not None:
        b.status.progress = _progress(seen.progress)
        b.status.metrics.update(seen.progress.metrics)
    state = seen.state if seen else RunState.PENDING
    reason = Reason.RUNNING if state is RunState.RUNNING else Reason.PENDING
    note = (seen.message if seen and seen.message else None) or f"{run.stage.value} stage {state.value.lower()}"
    if seen is not None and seen.attempts > 1:
        note += f" (attempt {seen.attempts})"
    b.cond(ConditionType.READY, False, reason, note)
    b.phase(Phase.RUNNING if state is RunState.RUNNING else Phase.PENDING, reason, note)
    b.requeue = POLL_SECONDS
    return False


def _release(b: _Builder, release: ModelRelease, rid: str, resolved: dict[str, InputArtifacts],
             serving_old: list[ObservedRun]) -> None:
    """After compression: wait for the gate, then serve; keep an older release until the new is Ready."""
    old_ready = any(o.state is RunState.READY for o in serving_old)
    if release.spec.eval_suite_ref is not None:
        key = f"EvalSuite/{release.spec.eval_suite_ref.name}"
        suite = b.obs.inputs.get(key)
        gate = suite.status.condition(ConditionType.GATE_PASSED.value) if suite and suite.status else None
        if gate is None or gate.status.value != "True":
            message = f"{key} gate did not pass: {gate.message if gate else 'no gate result'}"
            b.cond(ConditionType.GATE_PASSED, False, Reason.GATE_FAILED, message)
            b.cond(ConditionType.READY, old_ready, Reason.GATE_FAILED, message)
            b.phase(Phase.FAILED, Reason.GATE_FAILED, message, warning=True)
            b.delete = [n for n in b.delete if n not in {o.name for o in serving_old}]
            return
        b.cond(ConditionType.GATE_PASSED, True, Reason.GATE_PASSED, f"{key}: {gate.message}")
    if not release.spec.serving.enabled or not b.obs.serving_allowed:
        why = "serving disabled" if not release.spec.serving.enabled else "not served (--no-serve)"
        b.cond(ConditionType.READY, True, Reason.COMPLETED, f"compressed model published; {why}")
        b.phase(Phase.SUCCEEDED, Reason.COMPLETED, f"ModelRelease/{release.metadata.name} published")
        b.delete = sorted(set(b.delete) | {o.name for o in serving_old})
        return
    model = {k: v for k, v in b.status.artifacts.items() if k == "model"}
    inputs = {**resolved, f"ModelRelease/{release.metadata.name}": InputArtifacts(
        kind="ModelRelease", name=release.metadata.name, artifacts=model, lineage=b.status.lineage)}
    serve = stage_run(release, StageName.SERVE, rid, b.obs.store, inputs, b.obs.base_dir)
    seen = b.obs.runs.get(serve.name)
    if seen is not None and seen.state is RunState.FAILED:
        message = f"serve failed: {seen.message or 'no reason given'}"
        b.cond(ConditionType.READY, old_ready, Reason.STAGE_FAILED, message)
        b.phase(Phase.FAILED, Reason.STAGE_FAILED, message, warning=True)
        return
    if _waits_for_secrets(b, serve, seen, ready=old_ready):  # an older release keeps serving
        return
    b.runs.append(serve)
    if seen is not None and seen.state is RunState.READY:
        endpoint = seen.endpoint or (seen.result.artifacts.get("endpoint") if seen.result else None)
        b.status.endpoint = endpoint
        b.delete = sorted(set(b.delete) | {o.name for o in serving_old})
        b.cond(ConditionType.READY, True, Reason.SERVING, f"serving at {endpoint}")
        b.phase(Phase.SERVING, Reason.SERVING, f"serving at {endpoint}")
        b.requeue = None
        return
    message = "deploying" + (" (previous release keeps serving)" if old_ready else "")
    b.cond(ConditionType.READY, old_ready, Reason.DEPLOYING, message)
    b.phase(Phase.RUNNING, Reason.DEPLOYING, message)
    b.requeue = POLL_SECONDS
