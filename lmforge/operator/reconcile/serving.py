"""A ModelRelease after compression: its gate, then serving, and the switch from the version serving
to a new one (blue-green: the old keeps serving until the new passed its smoke evaluation)."""

from __future__ import annotations

from lmforge.api.contract import ArtifactName, InputArtifacts, StageName
from lmforge.api.meta import ConditionStatus, ConditionType, Phase, Reason, Rollout, RolloutState, Status
from lmforge.api.release import ModelRelease
from lmforge.api.tracking import RegistryAlias
from lmforge.operator.reconcile import canary
from lmforge.operator.reconcile.adapters import serve_adapters
from lmforge.operator.reconcile.builder import POLL_SECONDS, Builder, waits_for_secrets
from lmforge.operator.reconcile.gate import Verdict, release_gate, smoke_gate
from lmforge.operator.reconcile.runs import stage_run
from lmforge.operator.reconcile.types import Event, ObservedRun, RunState


def release_after_compression(
    b: Builder, release: ModelRelease, rid: str, resolved: dict[str, InputArtifacts], serving_old: list[ObservedRun]
) -> None:
    """After compression: wait for the gate (see gate.py), then serve; keep an older release until
    the new one is Ready. `serving_old` also holds an older server that is momentarily not Ready (it
    is kept, never deleted early); only a Ready one lets Ready stay True and is smoke-compared."""
    ready_old = [o for o in serving_old if o.state is RunState.READY]
    old_ready = bool(ready_old)
    suite = b.obs.inputs.get(f"EvalSuite/{release.spec.eval_suite_ref.name}") if release.spec.eval_suite_ref else None
    gate = release_gate(release, suite, b.status.artifacts.get(ArtifactName.MODEL.value))
    if gate is not None and gate.verdict is not Verdict.PASSED:
        b.delete = [n for n in b.delete if n not in {o.name for o in serving_old}]
        if gate.verdict is Verdict.PENDING:
            b.cond(ConditionType.GATE_PASSED, None, gate.reason, gate.message)
            b.cond(ConditionType.READY, old_ready, gate.reason, gate.message)
            b.phase(Phase.WAITING, gate.reason, gate.message)
            b.requeue = POLL_SECONDS
            return
        b.cond(ConditionType.GATE_PASSED, False, gate.reason, gate.message)
        b.cond(ConditionType.READY, old_ready, gate.reason, gate.message)
        b.phase(Phase.FAILED, gate.reason, gate.message, warning=True)
        return
    if gate is not None:
        b.cond(ConditionType.GATE_PASSED, True, gate.reason, gate.message)
    if not release.spec.serving.enabled or not b.obs.serving_allowed:
        why = "serving disabled" if not release.spec.serving.enabled else "not served (--no-serve)"
        b.cond(ConditionType.READY, True, Reason.COMPLETED, f"compressed model published; {why}")
        b.phase(Phase.SUCCEEDED, Reason.COMPLETED, f"ModelRelease/{release.metadata.name} published")
        b.delete = sorted(set(b.delete) | {o.name for o in serving_old})
        return
    model = {k: v for k, v in b.status.artifacts.items() if k == "model"}
    inputs = {
        **resolved,
        f"ModelRelease/{release.metadata.name}": InputArtifacts(
            kind="ModelRelease", name=release.metadata.name, artifacts=model, lineage=b.status.lineage
        ),
    }
    serve = stage_run(release, StageName.SERVE, rid, b.obs.store, inputs, b.obs.base_dir)
    seen = b.obs.runs.get(serve.name)
    if seen is not None and seen.state is RunState.FAILED:
        message = f"serve failed: {seen.message or 'no reason given'}"
        b.cond(ConditionType.READY, old_ready, Reason.STAGE_FAILED, message)
        b.phase(Phase.FAILED, Reason.STAGE_FAILED, message, warning=True)
        return
    if waits_for_secrets(b, serve, seen, ready=old_ready):  # an older release keeps serving
        return
    b.runs.append(serve)
    rollout = b.status.rollout
    if rollout is not None and rollout.candidate == rid and rollout.state is RolloutState.ROLLED_BACK and serving_old:
        # Rolled back: the new version is not started again until the spec changes (also while the
        # stable one is momentarily short of Ready replicas, e.g. scaled back up after a canary).
        b.runs.remove(serve)
        if serve.name in b.obs.runs:
            b.delete = sorted(set(b.delete) | {serve.name})
        stable = canary.stable_of(rollout, serving_old)
        if stable is not None:
            b.traffic = {stable.name: 100}
        canary.rolled_back(b, rollout)
        return
    cfg = canary.canary_mode(b, release)
    if seen is not None and seen.state is RunState.READY:
        endpoint = seen.endpoint or (seen.result.artifacts.get("endpoint") if seen.result else None)
        own = seen.run_endpoint or endpoint
        stable = canary.stable_of(canary.in_canary(b, rid), serving_old) if cfg is not None else None
        if cfg is not None and stable is not None:
            if not canary.advance(b, release, cfg, rid, serve.name, stable, own):
                return
        elif (
            ready_old
            and release.spec.serving.smoke_eval_suite_ref is not None
            and not smoke_passed(b, release, rid, serve.name, ready_old[0], own)
        ):
            return
        b.status.endpoint = endpoint
        b.delete = sorted(set(b.delete) | {o.name for o in serving_old})
        b.traffic = {serve.name: 100}
        message = (
            f"serving at {endpoint}"
            + serve_adapters(b, release, serve.name, seen, resolved)
            + "".join(f"; {o.run_id} at {canary.own_url(o)} stopped" for o in serving_old if o.run_id != rid)
        )
        b.cond(ConditionType.READY, True, Reason.SERVING, message)
        b.phase(Phase.SERVING, Reason.SERVING, message)
        b.requeue = None
        return
    if cfg is not None and canary.hold_while_short(b, release, cfg, rid, serve.name, serving_old):
        return
    if (
        rollout is not None
        and rollout.candidate == rid
        and rollout.state is RolloutState.PROMOTED
        and seen is not None
        and seen.state is RunState.RUNNING
        and b.obs.status.phase is Phase.SERVING
    ):  # promoted by replica ratio: its servers scale back to their full count while they serve
        message = f"serving at {b.status.endpoint} ({seen.message or 'scaling to its replicas'})"
        b.cond(ConditionType.READY, True, Reason.SERVING, message)
        b.status.phase = Phase.SERVING
        b.traffic = {serve.name: 100}
        b.requeue = POLL_SECONDS
        return
    message = "deploying" + (
        f" {rid} (previous release keeps serving: {ready_old[0].run_id} at {ready_old[0].endpoint})"
        if ready_old
        else ""
    )
    if ready_old:
        b.traffic = {ready_old[0].name: 100}
    b.cond(ConditionType.READY, old_ready, Reason.DEPLOYING, message)
    b.phase(Phase.RUNNING, Reason.DEPLOYING, message)
    b.requeue = POLL_SECONDS


def smoke_passed(
    b: Builder, release: ModelRelease, rid: str, new_run: str, old: ObservedRun, endpoint: str | None
) -> bool:
    """Blue-green: the new server is Ready beside the old one. True once the smoke suite passed on it
    (promote); otherwise the old one keeps serving, and a failed verdict stops the new one."""
    suite = (
        b.obs.inputs.get(f"EvalSuite/{release.spec.serving.smoke_eval_suite_ref.name}")
        if release.spec.serving.smoke_eval_suite_ref
        else None
    )
    verdict = smoke_gate(release, suite, endpoint)
    assert verdict is not None
    before = b.obs.status.rollout
    rollout = Rollout(
        state=RolloutState.SMOKE_TESTING,
        stable=old.run_id,
        stable_endpoint=canary.own_url(old),
        candidate=rid,
        candidate_endpoint=endpoint,
        message=verdict.message,
    )
    b.delete = [n for n in b.delete if n != old.name]
    if verdict.verdict is Verdict.PASSED:
        b.status.rollout = rollout.model_copy(update={"state": RolloutState.PROMOTED})
        b.events.append(
            Event(
                "Normal",
                Reason.PROMOTED.value,
                f"{rid} passed ({verdict.message}) and serves at {endpoint}; {old.run_id} at {canary.own_url(old)} "
                "stopped",
            )
        )
        return True
    if verdict.verdict is Verdict.FAILED:
        canary.roll_back(b, rollout, new_run, old)
        return False
    b.status.rollout = rollout
    b.traffic = {old.name: 100, new_run: 0}  # with a Gateway the new server takes none meanwhile
    message = (
        f"{old.run_id} serves at {old.endpoint}; {rid} is Ready at {endpoint} and takes over once "
        f"it passes its smoke evaluation ({verdict.message})"
    )
    if before is None or before.candidate != rid or before.state is not RolloutState.SMOKE_TESTING:
        b.events.append(Event("Normal", Reason.SMOKE_TESTING.value, message))
    b.cond(ConditionType.READY, True, Reason.SMOKE_TESTING, message)
    b.status.phase = Phase.SERVING
    b.requeue = POLL_SECONDS
    return False


def old_keeps_serving(b: Builder, serving_old: list[ObservedRun]) -> None:
    """While a new version is compressed, gated or deployed (or after it failed), the version serving
    keeps serving: the release stays Ready and Serving, and the message says where."""
    kept = [o for o in serving_old if o.name not in b.delete and o.state is RunState.READY]
    if not kept or b.status.phase is Phase.SERVING:
        return
    ready = b.status.condition(ConditionType.READY.value)
    rollout = b.status.rollout
    stable = [o for o in kept if rollout is not None and o.run_id == rollout.stable] or kept
    b.traffic = b.traffic or {stable[0].name: 100}
    where = f"{kept[0].run_id} keeps serving at {kept[0].endpoint}"
    message = f"{ready.message}; {where}" if ready is not None and ready.message else where
    if ready is not None and "keeps serving" in ready.message:
        message = ready.message
    b.cond(ConditionType.READY, True, Reason(ready.reason) if ready is not None else Reason.SERVING, message)
    b.status.phase = Phase.SERVING


def release_aliases(status: Status) -> dict[RegistryAlias, str | None]:
    """The model-registry aliases a release's status calls for: alias → the LMForge run id whose
    registered version should carry it, or None for "no version has it". An alias left out is left
    as it is (nothing in the status says otherwise: not served yet, or a new version still deploying
    beside the one serving, which keeps `champion`).

    While a candidate is smoke-tested or a canary beside the stable version, the stable one is
    `champion` and the candidate `challenger`; promoted, the candidate is `champion` and no version is `challenger`;
    rolled back, `champion` stays on the stable version and `challenger` goes. Without a rollout of the
    current run, the run serving (Ready because Serving) is `champion`."""
    rollout = status.rollout
    if rollout is not None and rollout.candidate == status.run_id:
        if rollout.state in (RolloutState.SMOKE_TESTING, RolloutState.CANARY):
            return {RegistryAlias.CHAMPION: rollout.stable, RegistryAlias.CHALLENGER: rollout.candidate}
        if rollout.state is RolloutState.ROLLED_BACK:
            return {RegistryAlias.CHAMPION: rollout.stable, RegistryAlias.CHALLENGER: None}
        return {RegistryAlias.CHAMPION: rollout.candidate, RegistryAlias.CHALLENGER: None}
    ready = status.condition(ConditionType.READY.value)
    serving = ready is not None and ready.reason == Reason.SERVING.value and ready.status is ConditionStatus.TRUE
    if status.phase is Phase.SERVING and serving and status.run_id is not None:
        return {RegistryAlias.CHAMPION: status.run_id, RegistryAlias.CHALLENGER: None}
    if rollout is not None and rollout.state is not RolloutState.PROMOTED:
        return {RegistryAlias.CHALLENGER: None}  # superseded (mid-test, mid-canary) or rolled back: not the candidate
    return {}
