"""A release's progressive canary (`serving.canary`), decided purely: the new version's share of
live traffic step by step, each step judged on live metrics, then promotion or rollback.

Only where the backend can split traffic (`Observed.traffic_split`: the operator, by replica ratio
behind the release's Service or by HTTPRoute weights); `lmforge run` stays blue-green (serving.py).

Order, once the new server is Ready beside a Ready stable one:

1. the smoke suite, if any (`smoke_gate`), with no traffic share for the new version: failed →
   ROLLED_BACK before any step;
2. CANARY at step 0 (`steps[0]` percent); each step is held `stepSeconds` (from `step_started`, by
   the reconcile's clock `Builder.now`: the decision stays a function of what it is given), then the
   step's figures decide (`judge_canary` on `Observed.canary_metrics`): FAILED → ROLLED_BACK,
   PENDING (too few requests, no data) → held and judged again, PASSED → the next step, after the
   last → PROMOTED (the caller then stops the stable version, as for blue-green);
3. with no metrics source (`canary_metrics` None: the operator has no Prometheus URL) a step passes
   on time alone, and the messages say that no metrics were checked.

The decision says *what* share each run gets (`Decision.traffic`); the backend says how.
"""

from __future__ import annotations

from datetime import datetime

from lmforge.api.contract import StageName
from lmforge.api.meta import ConditionType, Phase, Reason, Rollout, RolloutState
from lmforge.api.release import Canary, ModelRelease
from lmforge.operator.reconcile.analysis import judge_canary
from lmforge.operator.reconcile.builder import POLL_SECONDS, Builder
from lmforge.operator.reconcile.gate import Verdict, smoke_gate
from lmforge.operator.reconcile.runs import run_name
from lmforge.operator.reconcile.types import Event, ObservedRun, RunState

NO_METRICS = "no metrics were checked (the operator has no Prometheus URL: operator.prometheusUrl)"
"""How a step passed on time alone says so."""


def canary_mode(b: Builder, release: ModelRelease) -> Canary | None:
    """The canary settings when this backend runs a canary for this release, else None (blue-green)."""
    return release.spec.serving.canary if b.obs.traffic_split else None


def own_url(run: ObservedRun) -> str | None:
    """The URL that reaches this run's servers alone (the operator's per-run Service), else its endpoint."""
    return run.run_endpoint or run.endpoint


def _seconds_since(then: str | None, now: str) -> float:
    if then is None:
        return float("inf")
    return (_parse(now) - _parse(then)).total_seconds()


def _parse(ts: str) -> datetime:
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


def in_canary(b: Builder, rid: str) -> Rollout | None:
    """The rollout of run `rid` while it is smoke-tested or a canary, else None."""
    r = b.obs.status.rollout
    if r is not None and r.candidate == rid and r.state in (RolloutState.SMOKE_TESTING, RolloutState.CANARY):
        return r
    return None


def stable_of(rollout: Rollout | None, serving_old: list[ObservedRun]) -> ObservedRun | None:
    """The stable version of an ongoing rollout among the older servers (by run id), else a Ready one."""
    if rollout is not None:
        found = [o for o in serving_old if o.run_id == rollout.stable and o.state is not RunState.FAILED]
        if found:
            return found[0]
    ready = [o for o in serving_old if o.state is RunState.READY]
    return ready[0] if ready else None


def advance(
    b: Builder, release: ModelRelease, cfg: Canary, rid: str, new_run: str, stable: ObservedRun, new_url: str | None
) -> bool:
    """The new server is Ready beside the stable one: smoke test, then step on. True once promoted
    (the caller stops the stable version and reports Serving); otherwise the status, traffic,
    Events and requeue of the step are set here."""
    before = in_canary(b, rid)
    base = Rollout(
        state=RolloutState.SMOKE_TESTING,
        stable=stable.run_id,
        stable_endpoint=own_url(stable),
        candidate=rid,
        candidate_endpoint=new_url,
    )
    if before is None or before.state is RolloutState.SMOKE_TESTING:
        passed = ""
        if release.spec.serving.smoke_eval_suite_ref is not None:
            ref = release.spec.serving.smoke_eval_suite_ref
            verdict = smoke_gate(release, b.obs.inputs.get(f"EvalSuite/{ref.name}"), new_url)
            assert verdict is not None
            if verdict.verdict is Verdict.FAILED:
                roll_back(b, base.model_copy(update={"message": verdict.message}), new_run, stable)
                return False
            if verdict.verdict is Verdict.PENDING:
                _smoke_testing(b, base.model_copy(update={"message": verdict.message}), new_run, stable, before)
                return False
            passed = f"passed its smoke evaluation ({verdict.message})"
        _start_step(b, cfg, base, 0, new_run, stable, passed)
        return False
    assert before.step is not None
    waited = _seconds_since(before.step_started, b.now)
    if waited < cfg.step_seconds:
        _hold(b, cfg, before, new_run, stable, f"judged in {cfg.step_seconds - waited:.0f} s")
        b.requeue = max(1.0, cfg.step_seconds - waited)
        return False
    judged, figures = _judge(b, cfg)
    if judged is Verdict.FAILED:
        roll_back(b, before.model_copy(update={"message": figures}), new_run, stable)
        return False
    if judged is Verdict.PENDING:
        _hold(b, cfg, before.model_copy(update={"message": figures}), new_run, stable, f"held: {figures}")
        b.requeue = POLL_SECONDS
        return False
    if before.step + 1 < len(cfg.steps):
        _start_step(b, cfg, before, before.step + 1, new_run, stable, f"step {before.step + 1} passed: {figures}")
        return False
    b.status.rollout = before.model_copy(
        update={"state": RolloutState.PROMOTED, "weight": 100, "message": f"every canary step passed; last: {figures}"}
    )
    b.events.append(
        Event(
            "Normal",
            Reason.PROMOTED.value,
            f"{rid} passed {len(cfg.steps)} canary step(s) ({figures}) and takes all traffic at {new_url}; "
            f"{stable.run_id} at {own_url(stable)} stopped",
        )
    )
    return True


def _judge(b: Builder, cfg: Canary) -> tuple[Verdict, str]:
    """The step's verdict from the backend's figures; none configured passes on time alone."""
    if b.obs.canary_metrics is None:
        return Verdict.PASSED, f"held {cfg.step_seconds} s; {NO_METRICS}"
    return judge_canary(
        b.obs.canary_metrics,
        max_error_rate=cfg.max_error_rate,
        max_ttft_ratio=cfg.max_ttft_ratio,
        min_requests=cfg.min_requests,
    )


def _split(stable: ObservedRun, new_run: str, weight: int) -> dict[str, int]:
    return {stable.name: 100 - weight, new_run: weight}


def _smoke_testing(b: Builder, rollout: Rollout, new_run: str, stable: ObservedRun, before: Rollout | None) -> None:
    """The smoke suite has not judged the new server yet: it gets no traffic share meanwhile."""
    b.status.rollout = rollout.model_copy(update={"weight": 0})
    b.traffic = _split(stable, new_run, 0)
    message = (
        f"{stable.run_id} serves all traffic at {own_url(stable)}; {rollout.candidate} is Ready at "
        f"{rollout.candidate_endpoint} and starts its canary once it passes its smoke evaluation ({rollout.message})"
    )
    if before is None or before.state is not RolloutState.SMOKE_TESTING:
        b.events.append(Event("Normal", Reason.SMOKE_TESTING.value, message))
    b.cond(ConditionType.READY, True, Reason.SMOKE_TESTING, message)
    b.status.phase = Phase.SERVING
    b.requeue = POLL_SECONDS


def _start_step(
    b: Builder, cfg: Canary, rollout: Rollout, step: int, new_run: str, stable: ObservedRun, why: str
) -> None:
    weight = cfg.steps[step]
    now = b.now
    b.status.rollout = rollout.model_copy(
        update={"state": RolloutState.CANARY, "step": step, "weight": weight, "step_started": now, "message": why}
    )
    message = _where(b, cfg, b.status.rollout, stable, f"judged in {cfg.step_seconds} s")
    b.events.append(Event("Normal", Reason.CANARY_STEP.value, message + (f"; {why}" if why else "")))
    b.cond(ConditionType.READY, True, Reason.CANARY, message)
    b.status.phase = Phase.SERVING
    b.traffic = _split(stable, new_run, weight)
    b.requeue = float(cfg.step_seconds)


def _hold(b: Builder, cfg: Canary, rollout: Rollout, new_run: str, stable: ObservedRun, note: str) -> None:
    """The step goes on (not over yet, too little evidence, or the new server momentarily short of
    replicas): same share, same message shape."""
    b.status.rollout = rollout
    assert rollout.weight is not None
    b.cond(ConditionType.READY, True, Reason.CANARY, _where(b, cfg, rollout, stable, note))
    b.status.phase = Phase.SERVING
    b.traffic = _split(stable, new_run, rollout.weight)


def _where(b: Builder, cfg: Canary, rollout: Rollout, stable: ObservedRun, note: str) -> str:
    """Which run serves which share at which URL (and behind which release URL)."""
    step, weight = rollout.step or 0, rollout.weight or 0
    behind = f" behind {b.status.endpoint}" if b.status.endpoint else ""
    return (
        f"canary step {step + 1}/{len(cfg.steps)}{behind}: {rollout.stable} serves {100 - weight}% at "
        f"{own_url(stable)}, {rollout.candidate} serves {weight}% at {rollout.candidate_endpoint} ({note})"
    )


def roll_back(b: Builder, rollout: Rollout, new_run: str, stable: ObservedRun) -> None:
    """The new version failed (smoke suite or a step's figures): stop it, give the stable all traffic."""
    b.status.rollout = rollout.model_copy(update={"state": RolloutState.ROLLED_BACK, "weight": 0})
    b.runs = [r for r in b.runs if r.name != new_run]
    b.delete = sorted(set(b.delete) | {new_run})
    b.traffic = {stable.name: 100}
    rolled_back(b, b.status.rollout)


def failure_of(rollout: Rollout) -> str:
    """What the new version failed, in words."""
    if rollout.step is None:
        return f"failed its smoke evaluation ({rollout.message})"
    return f"failed canary step {rollout.step + 1} ({rollout.message})"


def rolled_back(b: Builder, rollout: Rollout) -> None:
    """The old version keeps serving (Ready stays True); the message (and the RolledBack Event) says why."""
    message = f"{rollout.candidate} {failure_of(rollout)} and was stopped; {rollout.stable} keeps serving at "
    message += f"{rollout.stable_endpoint}"
    b.cond(ConditionType.READY, True, Reason.ROLLED_BACK, message)
    b.phase(Phase.SERVING, Reason.ROLLED_BACK, message, warning=True)
    b.requeue = None


def hold_while_short(
    b: Builder, release: ModelRelease, cfg: Canary, rid: str, new_run: str, serving_old: list[ObservedRun]
) -> bool:
    """The canary's server is not Ready for a moment (scaled up for a larger step, a pod restarting):
    the step goes on with the same shares instead of starting the roll-out over. True when held."""
    rollout = in_canary(b, rid)
    stable = stable_of(rollout, serving_old)
    if rollout is None or rollout.state is not RolloutState.CANARY or stable is None:
        return False
    _hold(b, cfg, rollout, new_run, stable, "its servers are not all Ready yet")
    b.requeue = POLL_SECONDS
    return True


def drop_superseded(b: Builder, release: ModelRelease, rid: str, serving_old: list[ObservedRun]) -> list[ObservedRun]:
    """The spec changed again mid-rollout: the superseded candidate stops at once (it takes live
    traffic) and the stable version takes it all back while the newest version is built; the newest
    then starts its own rollout against the stable one. Returns the older servers still kept."""
    rollout = b.obs.status.rollout
    if (
        not b.obs.traffic_split
        or rollout is None
        or rollout.candidate == rid
        or rollout.state not in (RolloutState.SMOKE_TESTING, RolloutState.CANARY)
    ):
        return serving_old
    name = run_name(release, StageName.SERVE, rollout.candidate)
    stale = [o for o in serving_old if o.name == name or o.run_id == rollout.candidate]
    stable = [o for o in serving_old if o.run_id == rollout.stable and o not in stale]
    if not stale or not stable:
        return serving_old
    b.delete = sorted(set(b.delete) | {o.name for o in stale})
    b.status.rollout = rollout.model_copy(
        update={"state": RolloutState.ROLLED_BACK, "weight": 0, "message": "superseded by a newer spec"}
    )
    b.traffic = {stable[0].name: 100}
    b.events.append(
        Event(
            "Normal",
            Reason.ROLLED_BACK.value,
            f"{rollout.candidate} was stopped mid-rollout: the spec changed; {rollout.stable} serves all traffic "
            f"at {own_url(stable[0])} until {rid} is ready",
        )
    )
    return [o for o in serving_old if o not in stale]


def metrics_due(release: ModelRelease, rollout: Rollout | None, now: str) -> tuple[str, str, float] | None:
    """(stable run, canary run, window in seconds) when the next reconcile judges a canary step and so
    needs its figures; None otherwise. Backends ask their metrics source only then."""
    cfg = release.spec.serving.canary
    if cfg is None or rollout is None or rollout.state is not RolloutState.CANARY:
        return None
    if _seconds_since(rollout.step_started, now) < cfg.step_seconds:
        return None
    return rollout.stable, run_name(release, StageName.SERVE, rollout.candidate), float(cfg.step_seconds)
