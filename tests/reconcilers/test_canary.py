"""The progressive canary (`serving.canary`) as named table cases: where the backend can split
traffic (the operator), a changed release's new server is smoke-tested with no share, then serves
10 %, then 50 % of live traffic, each step held `stepSeconds` and judged on the step's metrics, then
takes all traffic (the stable stops) or is rolled back (it stops, the stable takes all again)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import pytest

from lmforge.api.contract import StageName
from lmforge.api.kinds import Resource
from lmforge.api.meta import Condition, ConditionStatus, Phase, Rollout, RolloutState, Status
from lmforge.api.release import ModelRelease
from lmforge.api.tracking import RegistryAlias
from lmforge.operator.reconcile import InputState, Observed, ObservedRun, RunState, reconcile
from lmforge.operator.reconcile.analysis import CanaryMetrics, VersionMetrics
from lmforge.operator.reconcile.canary import NO_METRICS, metrics_due
from lmforge.operator.reconcile.serving import release_aliases
from lmforge.operator.reconcile.types import Decision

from .test_reconcile import NOW, Case, _observed, _res, _run
from .test_rollout import COMPRESSED, PRE, _smoke

CANARY = {"steps": [10, 50], "stepSeconds": 5, "minRequests": 10}
REL_URL = "http://r.ns.svc:8000/v1"
OLD_URL, NEW_URL = "http://r-serve-old000.ns.svc:8000/v1", "http://r-serve-new.ns.svc:8000/v1"
T5, T10 = "2026-11-29T00:00:05Z", "2026-11-29T00:00:10Z"
OLD = ObservedRun(
    "r-serve-old000", "r-serve-old000", RunState.READY, StageName.SERVE, endpoint=REL_URL, run_endpoint=OLD_URL
)


def _release(smoke: bool = False) -> Resource:
    serving: dict[str, object] = {"replicas": 4, "canary": CANARY}
    if smoke:
        serving["smokeEvalSuiteRef"] = {"name": "s"}
    return _res("ModelRelease", "r", {"modelRef": {"kind": "PretrainJob", "name": "p"}, "serving": serving})


PLAIN, SMOKED = _release(), _release(smoke=True)
SERVING_OLD = Status(
    phase=Phase.SERVING,
    endpoint=REL_URL,
    run_id="r-old",
    conditions=[
        Condition(type="Ready", status=ConditionStatus.TRUE, reason="Serving", message=f"serving at {REL_URL}")
    ],
)
GOOD = CanaryMetrics(VersionMetrics(400, 0, 0.20), VersionMetrics(40, 0, 0.22), window_s=5)
ERRORS = CanaryMetrics(VersionMetrics(400, 0, 0.20), VersionMetrics(40, 12, 0.22), window_s=5)
SLOW = CanaryMetrics(VersionMetrics(400, 0, 0.20), VersionMetrics(40, 0, 1.50), window_s=5)
QUIET = CanaryMetrics(VersionMetrics(3, 0, 0.20), VersionMetrics(0, 0, None), window_s=5)


def _obs(
    release: Resource,
    status: Status,
    *,
    new: RunState = RunState.READY,
    smoke: InputState | None = None,
    metrics: CanaryMetrics | None = None,
) -> Observed:
    inputs = dict(PRE)
    if smoke is not None:
        inputs["EvalSuite/s"] = smoke
    runs = {**COMPRESSED, "serve": _run(StageName.SERVE, new, endpoint=REL_URL, run_endpoint=NEW_URL)}
    obs = _observed(Case("c", release, inputs=inputs, status=status, runs=runs))
    return replace(obs, runs={**obs.runs, OLD.name: OLD}, traffic_split=True, canary_metrics=metrics)


def _new_name(obs: Observed) -> str:
    return next(n for n, r in obs.runs.items() if r.stage is StageName.SERVE and n != OLD.name)


def _rollout(status: Status, state: RolloutState, step: int | None, weight: int, started: str = NOW) -> Status:
    """`status` (already holding the candidate's run id) in the middle of a rollout."""
    assert status.run_id is not None
    rollout = Rollout(
        state=state,
        stable=OLD.run_id,
        stable_endpoint=OLD_URL,
        candidate=status.run_id,
        candidate_endpoint=NEW_URL,
        step=step,
        weight=weight,
        step_started=started if step is not None else None,
    )
    return status.model_copy(update={"rollout": rollout})


def _candidate_status(release: Resource) -> Status:
    """SERVING_OLD after one reconcile: the run id of the new version is set."""
    return reconcile(_obs(release, SERVING_OLD, new=RunState.RUNNING), now=NOW).status


@dataclass
class CanaryCase:
    name: str
    release: Resource
    status: Status
    now: str = NOW
    new: RunState = RunState.READY
    smoke: InputState | None = None
    metrics: CanaryMetrics | None = None
    # expectations
    state: RolloutState | None = None
    step: int | None = None
    weight: int | None = None
    traffic: dict[str, int] = field(default_factory=dict)
    """Run name → share; "new" stands for the new version's run."""
    reason: str = "Canary"
    message_has: str = ""
    events: list[str] = field(default_factory=list)
    old_deleted: bool = False
    new_deleted: bool = False
    requeue: float | None = None


C_PLAIN, C_SMOKED = _candidate_status(PLAIN), _candidate_status(SMOKED)
STEP0 = _rollout(C_PLAIN, RolloutState.CANARY, 0, 10)
STEP1 = _rollout(C_PLAIN, RolloutState.CANARY, 1, 50)
ROLLED = reconcile(_obs(PLAIN, STEP1, metrics=ERRORS), now=T10).status

CASES = [
    CanaryCase(
        "new-server-ready-without-smoke-suite-starts-step-1-at-10-percent",
        PLAIN,
        C_PLAIN,
        state=RolloutState.CANARY,
        step=0,
        weight=10,
        traffic={OLD.name: 90, "new": 10},
        message_has=f"canary step 1/2 behind {REL_URL}: r-serve-old000 serves 90% at {OLD_URL}, ",
        events=["CanaryStep"],
        requeue=5.0,
    ),
    CanaryCase(
        "smoke-suite-first-the-new-server-gets-no-traffic-meanwhile",
        SMOKED,
        C_SMOKED,
        smoke=_smoke(None, None, Phase.RUNNING),
        state=RolloutState.SMOKE_TESTING,
        weight=0,
        traffic={OLD.name: 100, "new": 0},
        reason="SmokeTesting",
        message_has="starts its canary once it passes its smoke evaluation",
        events=["SmokeTesting"],
        requeue=10.0,
    ),
    CanaryCase(
        "smoke-suite-passed-starts-step-1",
        SMOKED,
        _rollout(C_SMOKED, RolloutState.SMOKE_TESTING, None, 0),
        smoke=_smoke(NEW_URL, True),
        state=RolloutState.CANARY,
        step=0,
        weight=10,
        traffic={OLD.name: 90, "new": 10},
        events=["CanaryStep"],
        requeue=5.0,
    ),
    CanaryCase(
        "smoke-failure-rolls-back-before-any-traffic",
        SMOKED,
        C_SMOKED,
        smoke=_smoke(NEW_URL, False),
        state=RolloutState.ROLLED_BACK,
        weight=0,
        traffic={OLD.name: 100},
        reason="RolledBack",
        message_has="failed its smoke evaluation (EvalSuite/s gate did not pass",
        events=["RolledBack"],
        new_deleted=True,
    ),
    CanaryCase(
        "a-step-is-held-until-step-seconds-passed",
        PLAIN,
        STEP0,
        now="2026-11-29T00:00:02Z",
        metrics=ERRORS,
        state=RolloutState.CANARY,
        step=0,
        weight=10,
        traffic={OLD.name: 90, "new": 10},
        message_has="judged in 3 s",
        requeue=3.0,
    ),
    CanaryCase(
        "step-1-passed-moves-to-50-percent",
        PLAIN,
        STEP0,
        now=T5,
        metrics=GOOD,
        state=RolloutState.CANARY,
        step=1,
        weight=50,
        traffic={OLD.name: 50, "new": 50},
        message_has="canary step 2/2",
        events=["CanaryStep"],
        requeue=5.0,
    ),
    CanaryCase(
        "last-step-passed-promotes-and-stops-the-stable",
        PLAIN,
        STEP1,
        now=T10,
        metrics=GOOD,
        state=RolloutState.PROMOTED,
        step=1,
        weight=100,
        traffic={"new": 100},
        reason="Serving",
        message_has=f"serving at {REL_URL}; r-serve-old000 at {OLD_URL} stopped",
        events=["Promoted", "Serving"],
        old_deleted=True,
    ),
    CanaryCase(
        "error-rate-over-the-limit-rolls-back",
        PLAIN,
        STEP1,
        now=T10,
        metrics=ERRORS,
        state=RolloutState.ROLLED_BACK,
        step=1,
        weight=0,
        traffic={OLD.name: 100},
        reason="RolledBack",
        message_has="failed canary step 2 (",
        events=["RolledBack"],
        new_deleted=True,
    ),
    CanaryCase(
        "time-to-first-token-over-the-ratio-rolls-back",
        PLAIN,
        STEP0,
        now=T5,
        metrics=SLOW,
        state=RolloutState.ROLLED_BACK,
        step=0,
        weight=0,
        traffic={OLD.name: 100},
        reason="RolledBack",
        message_has="failed canary step 1 (",
        events=["RolledBack"],
        new_deleted=True,
    ),
    CanaryCase(
        "too-few-requests-holds-the-step",
        PLAIN,
        STEP0,
        now=T5,
        metrics=QUIET,
        state=RolloutState.CANARY,
        step=0,
        weight=10,
        traffic={OLD.name: 90, "new": 10},
        message_has="held: ",
        requeue=10.0,
    ),
    CanaryCase(
        "without-prometheus-a-step-passes-on-time-and-says-so",
        PLAIN,
        STEP0,
        now=T5,
        metrics=None,
        state=RolloutState.CANARY,
        step=1,
        weight=50,
        traffic={OLD.name: 50, "new": 50},
        events=["CanaryStep"],
        requeue=5.0,
    ),
    CanaryCase(
        "canary-short-of-ready-replicas-keeps-its-step",
        PLAIN,
        STEP1,
        now=T5,
        new=RunState.RUNNING,
        state=RolloutState.CANARY,
        step=1,
        weight=50,
        traffic={OLD.name: 50, "new": 50},
        message_has="its servers are not all Ready yet",
        requeue=10.0,
    ),
    CanaryCase(
        "rolled-back-stays-rolled-back-and-the-stable-keeps-all-traffic",
        PLAIN,
        ROLLED,
        now=T10,
        metrics=GOOD,
        state=RolloutState.ROLLED_BACK,
        step=1,
        weight=0,
        traffic={OLD.name: 100},
        reason="RolledBack",
        new_deleted=True,
    ),
]


def _decide(c: CanaryCase) -> tuple[Decision, Observed]:
    obs = _obs(c.release, c.status, new=c.new, smoke=c.smoke, metrics=c.metrics)
    return reconcile(obs, now=c.now), obs


@pytest.mark.parametrize("c", CASES, ids=[c.name for c in CASES])
def test_canary(c: CanaryCase) -> None:
    decision, obs = _decide(c)
    new = _new_name(obs)
    status = decision.status
    ready = status.condition("Ready")
    assert ready is not None and ready.status is ConditionStatus.TRUE, ready  # Ready throughout
    assert ready.reason == c.reason and c.message_has in ready.message, ready.message
    assert status.phase is Phase.SERVING and status.endpoint == REL_URL
    rollout = status.rollout
    assert rollout is not None and rollout.state is c.state
    assert (rollout.step, rollout.weight) == (c.step, c.weight)
    assert (rollout.stable, rollout.stable_endpoint, rollout.candidate_endpoint) == (OLD.run_id, OLD_URL, NEW_URL)
    assert decision.traffic == {new if k == "new" else k: v for k, v in c.traffic.items()}
    assert [e.reason for e in decision.events] == c.events
    assert (OLD.name in decision.delete) is c.old_deleted
    assert (new in decision.delete) is c.new_deleted
    assert (new in [r.name for r in decision.runs]) is not c.new_deleted
    assert decision.requeue_after == c.requeue


def test_a_step_event_and_the_rollback_event_give_the_figures() -> None:
    (passed,) = [c for c in CASES if c.name == "step-1-passed-moves-to-50-percent"]
    event = _decide(passed)[0].events[0]
    assert "50%" in event.message and "step 1 passed" in event.message, event.message
    (failed,) = [c for c in CASES if c.name == "error-rate-over-the-limit-rolls-back"]
    event = _decide(failed)[0].events[0]
    assert event.type == "Warning" and "12" in event.message, event.message
    (timed,) = [c for c in CASES if c.name == "without-prometheus-a-step-passes-on-time-and-says-so"]
    assert NO_METRICS in _decide(timed)[0].events[0].message


def test_promotion_step_by_step_then_the_new_version_serves_alone() -> None:
    """Driven end to end through the reconciler's own statuses: 10 % → 50 % → promoted."""
    status, weights = C_PLAIN, []
    for now in (NOW, NOW, T5, T10):
        decision = reconcile(_obs(PLAIN, status, metrics=GOOD), now=now)
        status = decision.status
        assert status.rollout is not None
        weights.append(status.rollout.weight)
    assert weights == [10, 10, 50, 100] and status.rollout is not None
    assert status.rollout.state is RolloutState.PROMOTED and OLD.name in decision.delete
    # Once the stable's Deployment is gone, the release simply serves.
    obs = _obs(PLAIN, status)
    obs = replace(obs, runs={k: v for k, v in obs.runs.items() if k != OLD.name})
    again = reconcile(obs, now=T10)
    ready = again.status.condition("Ready")
    assert ready is not None and ready.reason == "Serving" and again.traffic == {_new_name(obs): 100}
    # By replica ratio the promoted Deployment scales back to its full count: it serves meanwhile.
    scaling = replace(obs, status=again.status)
    scaling = replace(
        scaling,
        runs={
            k: replace(v, state=RunState.RUNNING, message="2/4 replicas available") if k == _new_name(obs) else v
            for k, v in scaling.runs.items()
        },
    )
    during = reconcile(scaling, now=T10)
    ready = during.status.condition("Ready")
    assert ready is not None and ready.status is ConditionStatus.TRUE and "2/4 replicas available" in ready.message
    assert during.status.phase is Phase.SERVING and during.runs and during.events == []


def test_a_spec_change_mid_canary_stops_the_superseded_canary_and_gives_the_stable_all_traffic() -> None:
    obs = _obs(PLAIN, STEP1)
    old_canary = _new_name(obs)
    newer = _res(
        "ModelRelease",
        "r",
        {"modelRef": {"kind": "PretrainJob", "name": "p"}, "serving": {"replicas": 2, "canary": CANARY}},
    )
    # The newer spec's compress run is running; the superseded canary and the stable still serve.
    changed = _observed(
        Case("c", newer, inputs=dict(PRE), status=STEP1, runs={"compress": _run(StageName.COMPRESS, RunState.RUNNING)})
    )
    stale = replace(obs.runs[old_canary], name=old_canary)
    changed = replace(changed, runs={**changed.runs, OLD.name: OLD, old_canary: stale}, traffic_split=True)
    decision = reconcile(changed, now=T5)
    assert old_canary in decision.delete and OLD.name not in decision.delete
    assert decision.traffic == {OLD.name: 100}
    assert decision.status.rollout is not None and decision.status.rollout.state is RolloutState.ROLLED_BACK
    assert "superseded" in decision.status.rollout.message
    assert "RolledBack" in [e.reason for e in decision.events]
    ready = decision.status.condition("Ready")
    assert ready is not None and ready.status is ConditionStatus.TRUE and decision.status.phase is Phase.SERVING
    assert release_aliases(decision.status) == {RegistryAlias.CHALLENGER: None}


def test_aliases_challenger_during_the_canary_champion_after_promotion() -> None:
    status = _decide(CASES[0])[0].status
    assert release_aliases(status) == {RegistryAlias.CHAMPION: OLD.run_id, RegistryAlias.CHALLENGER: status.run_id}
    (promoted,) = [c for c in CASES if c.state is RolloutState.PROMOTED]
    status = _decide(promoted)[0].status
    assert release_aliases(status) == {RegistryAlias.CHAMPION: status.run_id, RegistryAlias.CHALLENGER: None}
    (rolled,) = [c for c in CASES if c.name == "error-rate-over-the-limit-rolls-back"]
    status = _decide(rolled)[0].status
    assert release_aliases(status) == {RegistryAlias.CHAMPION: OLD.run_id, RegistryAlias.CHALLENGER: None}


def test_lmforge_run_stays_blue_green_whatever_serving_canary_says() -> None:
    """Without a traffic-splitting backend the smoke-passed version takes over in one step."""
    obs = replace(_obs(SMOKED, C_SMOKED, smoke=_smoke(NEW_URL, True)), traffic_split=False)
    decision = reconcile(obs, now=NOW)
    assert decision.status.rollout is not None and decision.status.rollout.state is RolloutState.PROMOTED
    assert OLD.name in decision.delete


def test_metrics_are_asked_for_only_when_a_step_is_judged() -> None:
    assert isinstance(PLAIN, ModelRelease) and STEP0.rollout is not None
    assert metrics_due(PLAIN, STEP0.rollout, "2026-11-29T00:00:04Z") is None
    due = metrics_due(PLAIN, STEP0.rollout, T5)
    assert due is not None and (due[0], due[2]) == (OLD.name, 5.0) and due[1].startswith("r-serve-")
    assert metrics_due(PLAIN, C_PLAIN.rollout, T5) is None


def test_the_smoke_suite_evaluates_the_new_server_alone() -> None:
    """The smoke suite gets the new run's own URL, not the release's Service (which has both)."""
    decision, _ = _decide(next(c for c in CASES if c.name.startswith("smoke-suite-first")))
    assert decision.status.rollout is not None and decision.status.rollout.candidate_endpoint == NEW_URL
