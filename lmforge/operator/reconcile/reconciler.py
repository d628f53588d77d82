"""The reconciler: one pure function for all five kinds.

Policy on spec changes: a stage run's identity (`run_id`) is a hash of the spec and the inputs'
artifacts. A changed spec (new generation) or changed upstream output therefore starts a *new* run
under a new output prefix; the previous run's children are deleted (a serving release keeps its old
run until the new one is Ready). An unchanged spec maps to the same run, which is recognised as done
from its `result.json` and never redone — the embedded runner's "second run does nothing" and the
operator's "restart duplicates nothing" are the same rule.
"""

from __future__ import annotations

from lmforge.api.contract import STAGES_OF_KIND, ArtifactName, InputArtifacts, StageName
from lmforge.api.evalsuite import EvalSuite
from lmforge.api.kinds import Reference, Resource, gate_edge, references, smoke_suite_of
from lmforge.api.meta import ConditionType, Phase, Reason, RolloutState, now_rfc3339
from lmforge.api.release import ModelRelease
from lmforge.operator.reconcile.builder import (
    POLL_SECONDS,
    Builder,
    progress_of,
    secret_backoff,
    waits_for_secrets,
)
from lmforge.operator.reconcile.canary import drop_superseded
from lmforge.operator.reconcile.conditions import is_false, is_true
from lmforge.operator.reconcile.policy import violations
from lmforge.operator.reconcile.runs import run_id, run_name, stage_output, stage_run
from lmforge.operator.reconcile.serving import old_keeps_serving, release_after_compression
from lmforge.operator.reconcile.types import Decision, InputState, Observed, ObservedRun, RunState, StageRun

__all__ = ["POLL_SECONDS", "STORE_RETRY_SECONDS", "expected_runs", "reconcile", "secret_backoff"]

STORE_RETRY_SECONDS = 15.0
"""Wait before reading an unavailable store again (each look logs one line, no traceback)."""


def _resolve(resource: Resource, obs: Observed) -> tuple[dict[str, InputArtifacts], list[str], list[str]]:
    """(resolved inputs, what we wait for, what failed)."""
    resolved: dict[str, InputArtifacts] = {}
    waiting: list[str] = []
    failed: list[str] = []
    for ref in references(resource):
        key = f"{ref.kind}/{ref.name}"
        state = obs.inputs.get(key)
        if ref.hot:  # a LoRA adapter: served once Ready, never waited for (adapters.py)
            if key in resolved:  # also the release's model, resolved (or waited for) as such
                continue
            st = state.status if state is not None and state.exists else None
            if (
                state is not None
                and st is not None
                and is_true(st, ConditionType.READY)
                and st.phase is not Phase.FAILED
            ):
                resolved[key] = InputArtifacts(
                    kind=ref.kind,
                    name=ref.name,
                    artifacts=dict(st.artifacts),
                    lineage=list(st.lineage),
                    spec=state.spec,
                )
            continue
        if state is None or not state.exists:
            waiting.append(f"{key} ({ref.field}) does not exist yet")
            continue
        if gate_edge(resource, ref, state.spec):
            continue  # a suite evaluating this release's candidate: a gate after compression (gate.py)
        if ref.candidate:
            _resolve_candidate(ref, state, resolved, waiting, failed)
            continue
        switch = _switching_to(resource, ref, state)
        if switch is not None:  # the release's smoke suite: evaluate its new server, not the one serving
            resolved[key] = InputArtifacts(
                kind=ref.kind,
                name=ref.name,
                artifacts={"endpoint": switch},
                lineage=list(state.status.lineage) if state.status else [],
                spec=state.spec,
            )
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
            resolved[key] = InputArtifacts(
                kind=ref.kind,
                name=ref.name,
                artifacts=artifacts,
                metrics=dict(st.metrics),
                lineage=list(st.lineage),
                spec=state.spec,
            )
    return resolved, waiting, failed


def _resolve_candidate(
    ref: Reference, state: InputState, resolved: dict[str, InputArtifacts], waiting: list[str], failed: list[str]
) -> None:
    """An EvalSuite's `modelRef` to a ModelRelease: its compressed model, as soon as it is published
    (the release is not Ready before its gate passed, so Ready is not waited for)."""
    key, st = state.key, state.status
    model = st.artifacts.get(ArtifactName.MODEL.value) if st is not None else None
    if model is not None:
        resolved[key] = InputArtifacts(
            kind=ref.kind,
            name=ref.name,
            artifacts={ArtifactName.MODEL.value: model},
            lineage=list(st.lineage) if st else [],
            spec=state.spec,
        )
    elif st is not None and st.phase is Phase.FAILED:
        cond = st.condition(ConditionType.READY)
        failed.append(
            f"{key} ({ref.field}) failed before publishing its compressed candidate: "
            f"{cond.message if cond else 'no reason given'}"
        )
    else:
        waiting.append(f"{key} ({ref.field}) has not published its compressed candidate yet")


def _switching_to(resource: Resource, ref: Reference, state: InputState) -> str | None:
    """The new server's URL when `resource` is the smoke suite of the release `ref` names and that
    release is switching versions; else None."""
    rollout = state.status.rollout if state.status is not None else None
    if (
        not isinstance(resource, EvalSuite)
        or ref.field != "spec.endpoint.releaseRef"
        or rollout is None
        or rollout.state is not RolloutState.SMOKE_TESTING
        or not smoke_suite_of(state.spec, resource.metadata.name)
    ):
        return None
    return rollout.candidate_endpoint


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
    return [
        (run_name(obs.resource, s, rid), s, stage_output(obs.resource, s, rid))
        for s in STAGES_OF_KIND[obs.resource.kind]
    ]


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
    b = Builder(obs, now or now_rfc3339())
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
        message = (
            f"cannot read the artifact store {obs.store}: {obs.store_error}. Check that it is "
            "reachable from the operator and the stage pods and that its credentials Secret (the "
            "chart's store.s3.secretName) exists with valid keys; retrying"
        )
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
    if isinstance(resource, EvalSuite):
        _record_evaluated_model(b, resource, resolved)
    stages = STAGES_OF_KIND[resource.kind]
    first = stage_run(resource, stages[0], rid, obs.store, resolved, obs.base_dir)
    current = {first.name}
    if isinstance(resource, ModelRelease):
        current.add(run_name(resource, StageName.SERVE, rid))
    # An older release's server stays until the new one is Ready — also while its own Deployment is
    # momentarily not Ready (a pod restarting, a node drained): deleting it then would leave nothing.
    serving_old = [
        o
        for o in obs.runs.values()
        if o.name not in current and o.stage is StageName.SERVE and o.state is not RunState.FAILED
    ]
    b.delete = sorted(o.name for o in obs.runs.values() if o.name not in current and o not in serving_old)
    if isinstance(resource, ModelRelease):
        serving_old = drop_superseded(b, resource, rid, serving_old)

    done = _run_job(b, first, obs.runs.get(first.name))
    if isinstance(resource, EvalSuite) and done:
        passed, message = _gate(resource, b.status.metrics)
        b.status.metrics["gate_passed"] = 1.0 if passed else 0.0
        b.cond(ConditionType.GATE_PASSED, passed, Reason.GATE_PASSED if passed else Reason.GATE_FAILED, message)
    if isinstance(resource, ModelRelease):
        if done:
            release_after_compression(b, resource, rid, resolved, serving_old)
        old_keeps_serving(b, serving_old)
    return b.decision()


def _record_evaluated_model(b: Builder, suite: EvalSuite, resolved: dict[str, InputArtifacts]) -> None:
    """Say which model artifact (or endpoint) this run evaluates, from the moment it is decided, so
    that a release gated on its candidate (or smoke-testing a new server) never takes a result about
    an earlier one for one about its own."""
    ref, endpoint = suite.spec.model_ref, suite.spec.endpoint
    if ref is not None and ref.kind is not None:
        found = resolved.get(f"{ref.kind.value}/{ref.name}")
        model = found.artifacts.get(ArtifactName.MODEL.value) if found is not None else None
        if model is not None:
            b.status.artifacts[ArtifactName.EVALUATED_MODEL.value] = model
    url = endpoint.url if endpoint is not None else None
    if endpoint is not None and endpoint.release_ref is not None:
        found = resolved.get(f"ModelRelease/{endpoint.release_ref.name}")
        url = found.artifacts.get("endpoint") if found is not None else None
    if url is not None:
        b.status.artifacts[ArtifactName.EVALUATED_ENDPOINT.value] = url


def _run_job(b: Builder, run: StageRun, seen: ObservedRun | None) -> bool:
    """Drive a run-to-completion stage; True once it has succeeded (result written)."""
    if seen is not None and seen.result is not None:
        result = seen.result
        b.status.artifacts.update(result.artifacts)
        b.status.metrics.update(result.metrics)
        b.status.progress = progress_of(result) or b.status.progress
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
    if waits_for_secrets(b, run, seen):
        return False
    b.runs.append(run)
    b.status.started_at = b.status.started_at or b.now
    b.status.attempts = seen.attempts if seen else max(b.status.attempts, 0)
    if seen is not None and seen.progress is not None:
        b.status.progress = progress_of(seen.progress)
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
