"""The model-registry aliases a release's status calls for (`release_aliases`), as named table cases:
first on hand-made statuses, then on the statuses the reconciler decides through a blue-green switch
(the rollout cases of test_rollout.py), so the aliases follow what actually serves."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from lmforge.api.contract import StageName
from lmforge.api.meta import Condition, ConditionStatus, Phase, Rollout, RolloutState, Status
from lmforge.api.tracking import RegistryAlias
from lmforge.operator.reconcile import RunState, reconcile
from lmforge.operator.reconcile.serving import release_aliases

from .test_reconcile import NOW, Case, _observed, _run
from .test_rollout import CASES, COMPRESSED, NEW_URL, OLD_URL, PRE, RELEASE, RolloutCase, _decide, _smoke

CHAMPION, CHALLENGER = RegistryAlias.CHAMPION, RegistryAlias.CHALLENGER


def _ready(reason: str, status: ConditionStatus = ConditionStatus.TRUE) -> list[Condition]:
    return [Condition(type="Ready", status=status, reason=reason)]


def _rollout(state: RolloutState, candidate: str = "r-new") -> Rollout:
    return Rollout(
        state=state, stable="r-old", stable_endpoint=OLD_URL, candidate=candidate, candidate_endpoint=NEW_URL
    )


@dataclass
class AliasCase:
    name: str
    status: Status
    want: dict[RegistryAlias, str | None]


ALIAS_CASES = [
    AliasCase("nothing-serves-yet", Status(phase=Phase.RUNNING, run_id="r-new", conditions=_ready("Running")), {}),
    AliasCase(
        "first-version-serving-is-champion",
        Status(phase=Phase.SERVING, run_id="r-new", endpoint=OLD_URL, conditions=_ready("Serving")),
        {CHAMPION: "r-new", CHALLENGER: None},
    ),
    AliasCase(
        "a-new-version-deploying-beside-the-one-serving-moves-nothing",
        Status(phase=Phase.SERVING, run_id="r-new", endpoint=OLD_URL, conditions=_ready("Deploying")),
        {},
    ),
    AliasCase(
        "smoke-testing-stable-is-champion-candidate-is-challenger",
        Status(
            phase=Phase.SERVING,
            run_id="r-new",
            endpoint=OLD_URL,
            rollout=_rollout(RolloutState.SMOKE_TESTING),
            conditions=_ready("SmokeTesting"),
        ),
        {CHAMPION: "r-old", CHALLENGER: "r-new"},
    ),
    AliasCase(
        "promoted-candidate-is-champion-and-nobody-challenger",
        Status(
            phase=Phase.SERVING,
            run_id="r-new",
            endpoint=NEW_URL,
            rollout=_rollout(RolloutState.PROMOTED),
            conditions=_ready("Serving"),
        ),
        {CHAMPION: "r-new", CHALLENGER: None},
    ),
    AliasCase(
        "promoted-candidate-stays-champion-while-its-server-restarts",
        Status(
            phase=Phase.RUNNING,
            run_id="r-new",
            rollout=_rollout(RolloutState.PROMOTED),
            conditions=_ready("Deploying", ConditionStatus.FALSE),
        ),
        {CHAMPION: "r-new", CHALLENGER: None},
    ),
    AliasCase(
        "rolled-back-champion-stays-on-stable-and-challenger-goes",
        Status(
            phase=Phase.SERVING,
            run_id="r-new",
            endpoint=OLD_URL,
            rollout=_rollout(RolloutState.ROLLED_BACK),
            conditions=_ready("RolledBack"),
        ),
        {CHAMPION: "r-old", CHALLENGER: None},
    ),
    AliasCase(
        "a-candidate-superseded-mid-test-loses-challenger",
        Status(
            phase=Phase.SERVING,
            run_id="r-newer",
            endpoint=OLD_URL,
            rollout=_rollout(RolloutState.SMOKE_TESTING),
            conditions=_ready("Deploying"),
        ),
        {CHALLENGER: None},
    ),
    AliasCase(
        "an-old-rollout-does-not-outvote-the-version-serving-now",
        Status(
            phase=Phase.SERVING,
            run_id="r-newer",
            endpoint=NEW_URL,
            rollout=_rollout(RolloutState.ROLLED_BACK),
            conditions=_ready("Serving"),
        ),
        {CHAMPION: "r-newer", CHALLENGER: None},
    ),
    AliasCase(
        "stopped-with-the-runner-keeps-the-last-champion",
        Status(phase=Phase.SUCCEEDED, run_id="r-new", conditions=_ready("Completed")),
        {},
    ),
    AliasCase(
        "serve-failed-moves-nothing",
        Status(phase=Phase.FAILED, run_id="r-new", conditions=_ready("StageFailed", ConditionStatus.FALSE)),
        {},
    ),
]


@pytest.mark.parametrize("case", ALIAS_CASES, ids=[c.name for c in ALIAS_CASES])
def test_release_aliases(case: AliasCase) -> None:
    assert release_aliases(case.status) == case.want


NEW = "<candidate>"
"""Stands for the new version's run id (the reconciler derives it from the spec)."""
THROUGH_A_SWITCH = {
    "old-serves-while-the-new-version-compresses": {},
    "old-serves-while-the-new-server-starts": {},
    "new-server-ready-is-smoke-tested-before-it-takes-over": {CHAMPION: "r-old", CHALLENGER: NEW},
    "a-stale-pass-is-not-a-smoke-pass": {CHAMPION: "r-old", CHALLENGER: NEW},
    "new-version-that-passed-is-promoted-and-the-old-stops": {CHAMPION: NEW, CHALLENGER: None},
    "new-version-that-failed-is-stopped-and-the-old-keeps-serving": {CHAMPION: "r-old", CHALLENGER: None},
}


@pytest.mark.parametrize("rc", CASES, ids=[c.case.name for c in CASES])
def test_aliases_follow_the_reconciled_rollout(rc: RolloutCase) -> None:
    decision, _ = _decide(rc)
    new = decision.status.run_id
    assert new is not None and new != "r-old"
    want = {k: new if v == NEW else v for k, v in THROUGH_A_SWITCH[rc.case.name].items()}
    assert release_aliases(decision.status) == want


def test_a_first_version_serving_is_the_champion_as_reconciled() -> None:
    case = Case(
        "first",
        RELEASE,
        inputs={**PRE, "EvalSuite/s": _smoke(None, None, Phase.WAITING)},
        runs={**COMPRESSED, "serve": _run(StageName.SERVE, RunState.READY, endpoint=OLD_URL)},
    )
    status = reconcile(_observed(case), now=NOW).status
    assert status.run_id is not None and status.phase is Phase.SERVING
    assert release_aliases(status) == {CHAMPION: status.run_id, CHALLENGER: None}
