"""Blue-green as named table cases: a changed release whose old version serves starts its new server
beside it, and the old one stops only after `serving.smokeEvalSuiteRef` passed on the new one."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from lmforge.api.contract import StageName
from lmforge.api.meta import Condition, ConditionStatus, Phase, Rollout, RolloutState, Status
from lmforge.api.validation import validate_paths
from lmforge.operator.reconcile import InputState, Observed, ObservedRun, RunState, reconcile
from lmforge.operator.reconcile.types import Decision

from .test_reconcile import NOW, Case, _observed, _ready, _res, _result, _run

TASKS = [{"name": "smoke", "type": "generation", "dataUri": "s.jsonl"}]
RELEASE = _res(
    "ModelRelease",
    "r",
    {"modelRef": {"kind": "PretrainJob", "name": "p"}, "serving": {"smokeEvalSuiteRef": {"name": "s"}}},
)
SMOKE = _res(
    "EvalSuite",
    "s",
    {"endpoint": {"releaseRef": {"name": "r"}}, "tasks": TASKS, "thresholds": ["smoke.exact_match >= 1"]},
)
OLD_URL, NEW_URL = "http://127.0.0.1:8000/v1", "http://127.0.0.1:40001/v1"
OLD = ObservedRun("r-serve-old000", "r-old", RunState.READY, StageName.SERVE, endpoint=OLD_URL)
PRE = {"PretrainJob/p": _ready("PretrainJob", "p")}
COMPRESSED = {
    "compress": _run(StageName.COMPRESS, RunState.SUCCEEDED, result=_result(StageName.COMPRESS, {"model": "cm"}))
}
SERVING_OLD = Status(
    phase=Phase.SERVING,
    endpoint=OLD_URL,
    run_id="r-old",
    conditions=[
        Condition(type="Ready", status=ConditionStatus.TRUE, reason="Serving", message=f"serving at {OLD_URL}")
    ],
)


def _smoke(evaluated: str | None, gate: bool | None, phase: Phase = Phase.SUCCEEDED) -> InputState:
    """The smoke suite as the release sees it."""
    conds = [Condition(type="Ready", status=ConditionStatus.TRUE, reason="Completed")]
    if gate is not None:
        conds.append(
            Condition(
                type="GatePassed",
                status=ConditionStatus.TRUE if gate else ConditionStatus.FALSE,
                reason="GatePassed" if gate else "GateFailed",
                message=f"smoke.exact_match >= 1: {1 if gate else 0} {'passed' if gate else 'FAILED'}",
            )
        )
    artifacts = {"evaluatedEndpoint": evaluated} if evaluated else {}
    return InputState(
        "EvalSuite",
        "s",
        True,
        Status(phase=phase, conditions=conds, artifacts=artifacts),
        SMOKE.spec.model_dump(mode="json", by_alias=True, exclude_none=True),
    )


@dataclass
class RolloutCase:
    case: Case
    rollout: RolloutState | None = None
    endpoint: str | None = OLD_URL
    old_deleted: bool = False
    new_deleted: bool = False
    events: list[str] = field(default_factory=list)
    """Reasons of the events, in order."""


def _new_ready(
    name: str, smoke: InputState, reason: str, message_has: str, run_stages: tuple[str, ...] = ("serve",)
) -> Case:
    """The new version's server is Ready beside the old one; the smoke suite stands as given."""
    return Case(
        name,
        RELEASE,
        inputs={**PRE, "EvalSuite/s": smoke},
        status=SERVING_OLD,
        runs={**COMPRESSED, "serve": _run(StageName.SERVE, RunState.READY, endpoint=NEW_URL)},
        phase=Phase.SERVING,
        ready="True",
        reason=reason,
        message_has=message_has,
        run_stages=list(run_stages),
    )


CASES = [
    RolloutCase(
        Case(
            "old-serves-while-the-new-version-compresses",
            RELEASE,
            inputs={**PRE, "EvalSuite/s": _smoke(OLD_URL, True)},
            status=SERVING_OLD,
            runs={"compress": _run(StageName.COMPRESS, RunState.RUNNING)},
            phase=Phase.SERVING,
            ready="True",
            reason="Running",
            message_has=f"r-old keeps serving at {OLD_URL}",
            run_stages=["compress"],
        ),
        events=["Running"],
    ),
    RolloutCase(
        Case(
            "old-serves-while-the-new-server-starts",
            RELEASE,
            inputs={**PRE, "EvalSuite/s": _smoke(OLD_URL, True)},
            status=SERVING_OLD,
            runs={**COMPRESSED, "serve": _run(StageName.SERVE, RunState.RUNNING)},
            phase=Phase.SERVING,
            ready="True",
            reason="Deploying",
            message_has=f"r-old at {OLD_URL}",
            run_stages=["serve"],
        ),
        events=["Deploying"],
    ),
    RolloutCase(
        _new_ready(
            "new-server-ready-is-smoke-tested-before-it-takes-over",
            _smoke(OLD_URL, True),
            "SmokeTesting",
            f"r-old serves at {OLD_URL}; ",
        ),
        rollout=RolloutState.SMOKE_TESTING,
        events=["SmokeTesting"],
    ),
    RolloutCase(
        _new_ready(
            "a-stale-pass-is-not-a-smoke-pass",
            _smoke(NEW_URL, True, Phase.RUNNING),
            "SmokeTesting",
            f"is Ready at {NEW_URL}",
        ),
        rollout=RolloutState.SMOKE_TESTING,
        events=["SmokeTesting"],
    ),
    RolloutCase(
        _new_ready(
            "new-version-that-passed-is-promoted-and-the-old-stops",
            _smoke(NEW_URL, True),
            "Serving",
            f"serving at {NEW_URL}; r-old at {OLD_URL} stopped",
        ),
        rollout=RolloutState.PROMOTED,
        endpoint=NEW_URL,
        old_deleted=True,
        events=["Promoted"],
    ),
    RolloutCase(
        _new_ready(
            "new-version-that-failed-is-stopped-and-the-old-keeps-serving",
            _smoke(NEW_URL, False),
            "RolledBack",
            f"failed its smoke evaluation (EvalSuite/s gate did not pass on the new "
            f"server at {NEW_URL}: smoke.exact_match >= 1: 0 FAILED) and was stopped; r-old keeps "
            f"serving at {OLD_URL}",
            run_stages=(),
        ),
        rollout=RolloutState.ROLLED_BACK,
        new_deleted=True,
        events=["RolledBack"],
    ),
]


def _decide(rc: RolloutCase) -> tuple[Decision, Observed]:
    obs = _observed(rc.case)
    obs = Observed(**{**obs.__dict__, "runs": {**obs.runs, OLD.name: OLD}})
    return reconcile(obs, now=NOW), obs


@pytest.mark.parametrize("rc", CASES, ids=[c.case.name for c in CASES])
def test_rollout(rc: RolloutCase) -> None:
    decision, obs = _decide(rc)
    status, case = decision.status, rc.case
    ready = status.condition("Ready")
    assert status.phase is case.phase
    assert ready is not None and ready.status.value == case.ready and ready.reason == case.reason
    assert case.message_has in ready.message, ready.message
    assert [r.stage.value for r in decision.runs] == case.run_stages
    assert status.endpoint == rc.endpoint
    assert (OLD.name in decision.delete) is rc.old_deleted
    new_serve = [n for n, r in obs.runs.items() if r.stage is StageName.SERVE and n != OLD.name]
    assert (bool(new_serve) and new_serve[0] in decision.delete) is rc.new_deleted
    assert [e.reason for e in decision.events] == rc.events
    if rc.rollout is None:
        assert status.rollout is None
    else:
        assert status.rollout is not None and status.rollout.state is rc.rollout
        assert (status.rollout.stable, status.rollout.stable_endpoint) == ("r-old", OLD_URL)
        assert status.rollout.candidate == status.run_id and status.rollout.candidate_endpoint == NEW_URL


def test_a_rolled_back_version_is_not_started_again_and_smoke_testing_posts_one_event() -> None:
    (failed,) = [c for c in CASES if c.rollout is RolloutState.ROLLED_BACK]
    first, _ = _decide(failed)
    later = Case("later", RELEASE, inputs=failed.case.inputs, status=first.status, runs=COMPRESSED)
    again, _ = _decide(RolloutCase(later))
    assert again.runs == [] and OLD.name not in again.delete and again.events == []
    ready = again.status.condition("Ready")
    assert ready is not None and ready.reason == "RolledBack" and again.status.endpoint == OLD_URL

    (testing,) = [c for c in CASES if c.case.name == "new-server-ready-is-smoke-tested-before-it-takes-over"]
    first, _ = _decide(testing)
    again, _ = _decide(RolloutCase(Case(**{**testing.case.__dict__, "status": first.status})))
    assert again.events == [] and again.status.rollout == first.status.rollout


def test_the_smoke_suite_evaluates_the_new_server_during_a_switch_and_the_serving_one_otherwise() -> None:
    spec = RELEASE.spec.model_dump(mode="json", by_alias=True, exclude_none=True)

    def run_of(rollout: Rollout | None) -> tuple[str, str]:
        release = InputState(
            "ModelRelease",
            "r",
            True,
            Status(phase=Phase.SERVING, endpoint=OLD_URL, rollout=rollout, conditions=SERVING_OLD.conditions),
            spec,
        )
        decision = reconcile(_observed(Case("s", SMOKE, inputs={"ModelRelease/r": release})), now=NOW)
        return (
            decision.runs[0].spec.inputs["ModelRelease/r"].artifacts["endpoint"],
            decision.status.artifacts["evaluatedEndpoint"],
        )

    switching = Rollout(
        state=RolloutState.SMOKE_TESTING,
        stable="r-old",
        stable_endpoint=OLD_URL,
        candidate="r-new",
        candidate_endpoint=NEW_URL,
    )
    assert run_of(switching) == (NEW_URL, NEW_URL)
    assert run_of(None) == (OLD_URL, OLD_URL)
    assert run_of(switching.model_copy(update={"state": RolloutState.ROLLED_BACK})) == (OLD_URL, OLD_URL)


def test_a_first_version_serves_at_once_without_waiting_for_its_smoke_suite() -> None:
    case = Case(
        "first",
        RELEASE,
        inputs={**PRE, "EvalSuite/s": _smoke(None, None, Phase.WAITING)},
        runs={**COMPRESSED, "serve": _run(StageName.SERVE, RunState.READY, endpoint=OLD_URL)},
    )
    decision = reconcile(_observed(case), now=NOW)
    assert decision.status.phase is Phase.SERVING and decision.status.rollout is None


def test_a_smoke_suite_that_evaluates_something_else_is_refused(tmp_path: Path) -> None:
    docs = [
        {"apiVersion": "lmforge.io/v1alpha1", "kind": k, "metadata": {"name": n}, "spec": s}
        for k, n, s in [
            ("Dataset", "d", {"sources": [{"name": "s", "uri": "x.txt", "license": "MIT"}]}),
            ("PretrainJob", "p", {"datasetRef": {"name": "d"}, "training": {"maxSteps": 10}}),
            ("ModelRelease", "r", RELEASE.spec.model_dump(mode="json", by_alias=True, exclude_none=True)),
            ("EvalSuite", "s", {"modelRef": {"kind": "PretrainJob", "name": "p"}, "tasks": TASKS}),
        ]
    ]
    (tmp_path / "all.yaml").write_text(yaml.safe_dump_all(docs))
    _, problems = validate_paths([tmp_path / "all.yaml"])
    (problem,) = [p for p in problems if p.field == "spec.serving.smokeEvalSuiteRef"]
    assert "does not evaluate this release's endpoint" in problem.message and "endpoint.releaseRef" in problem.message
