"""The candidate gate as named table cases: an EvalSuite whose modelRef is a ModelRelease evaluates
that release's compressed model, and the release serves only once that result passed.

Order: compress → evaluate the candidate → gate → serve."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from lmforge.api.contract import StageName
from lmforge.api.kinds import references
from lmforge.api.meta import Condition, ConditionStatus, Phase, Status
from lmforge.api.validation import dependency_order, validate_paths
from lmforge.operator.reconcile import InputState, ObservedRun, RunState, reconcile
from lmforge.operator.reconcile.runs import run_id

from .test_reconcile import NOW, STORE, Case, _observed, _ready, _res, _result, _run

TASKS = [{"name": "mc", "type": "multipleChoice", "dataUri": "x"}]
CANDIDATE_SUITE = _res(
    "EvalSuite",
    "e",
    {"modelRef": {"kind": "ModelRelease", "name": "r"}, "tasks": TASKS, "thresholds": ["mc.acc >= 0.5"]},
)
GATED = _res("ModelRelease", "r", {"modelRef": {"kind": "PretrainJob", "name": "p"}, "evalSuiteRef": {"name": "e"}})
SUITE_SPEC = CANDIDATE_SUITE.spec.model_dump(mode="json", by_alias=True, exclude_none=True)
CM = f"{STORE}/modelreleases/default/r/r-abc/model"
"""The release's compressed candidate."""
OLD = f"{STORE}/modelreleases/default/r/r-old/model"


def _release_input(phase: Phase, artifacts: dict[str, str] | None = None) -> InputState:
    """The ModelRelease as its candidate suite sees it."""
    conds = [
        Condition(
            type="Ready",
            status=ConditionStatus.FALSE,
            reason="StageFailed" if phase is Phase.FAILED else "GatePending",
            message="compress stage failed: perplexity rose 80%" if phase is Phase.FAILED else "",
        )
    ]
    return InputState(
        "ModelRelease",
        "r",
        True,
        Status(phase=phase, conditions=conds, artifacts=artifacts or {}, lineage=["PretrainJob/p", "Dataset/d"]),
    )


def _suite_input(phase: Phase, evaluated: str | None, gate: bool | None = None) -> InputState:
    """The candidate suite as the release sees it (with its spec: that is what makes it a candidate gate)."""
    conds = [
        Condition(
            type="Ready",
            status=ConditionStatus.TRUE if phase is Phase.SUCCEEDED else ConditionStatus.FALSE,
            reason={Phase.SUCCEEDED: "Completed", Phase.FAILED: "StageFailed"}.get(phase, "Running"),
            message="evaluate stage failed: CUDA out of memory" if phase is Phase.FAILED else "",
        )
    ]
    if gate is not None:
        conds.append(
            Condition(
                type="GatePassed",
                status=ConditionStatus.TRUE if gate else ConditionStatus.FALSE,
                reason="GatePassed" if gate else "GateFailed",
                message=f"mc.acc >= 0.5: {0.75 if gate else 0.2} {'passed' if gate else 'FAILED'}",
            )
        )
    artifacts = {"results": f"{STORE}/evalsuites/default/e/x/results"}
    if evaluated is not None:
        artifacts["evaluatedModel"] = evaluated
    return InputState("EvalSuite", "e", True, Status(phase=phase, conditions=conds, artifacts=artifacts), SUITE_SPEC)


PRE = {"PretrainJob/p": _ready("PretrainJob", "p")}
COMPRESSED = {
    "compress": _run(StageName.COMPRESS, RunState.SUCCEEDED, result=_result(StageName.COMPRESS, {"model": CM}))
}


@dataclass
class GateCase:
    case: Case
    gate: str | None = None
    """Expected GatePassed status (None: not checked)."""
    evaluated: str | None = None
    """Expected `status.artifacts.evaluatedModel` of a suite."""
    inputs_of_run: dict[str, dict[str, str]] = field(default_factory=dict)


CASES = [
    GateCase(
        Case(
            "suite-waits-until-the-candidate-is-compressed",
            CANDIDATE_SUITE,
            inputs={"ModelRelease/r": _release_input(Phase.RUNNING)},
            phase=Phase.WAITING,
            reason="WaitingForInput",
            message_has="ModelRelease/r (spec.modelRef) has not published its compressed candidate yet",
        )
    ),
    GateCase(
        Case(
            "suite-evaluates-the-candidate-before-the-release-is-ready",
            CANDIDATE_SUITE,
            inputs={"ModelRelease/r": _release_input(Phase.WAITING, {"model": CM, "report": "rep"})},
            phase=Phase.PENDING,
            reason="Pending",
            run_stages=["evaluate"],
        ),
        evaluated=CM,
        inputs_of_run={"ModelRelease/r": {"model": CM}},
    ),
    GateCase(
        Case(
            "suite-fails-when-the-release-failed-before-compressing",
            CANDIDATE_SUITE,
            inputs={"ModelRelease/r": _release_input(Phase.FAILED)},
            phase=Phase.FAILED,
            reason="InputFailed",
            message_has="failed before publishing its compressed candidate: compress stage failed",
        )
    ),
    GateCase(
        Case(
            "suite-still-evaluates-a-candidate-its-release-marked-failed",
            CANDIDATE_SUITE,
            inputs={"ModelRelease/r": _release_input(Phase.FAILED, {"model": CM})},
            phase=Phase.PENDING,
            reason="Pending",
            run_stages=["evaluate"],
        ),
        evaluated=CM,
    ),
    GateCase(
        Case(
            "release-compresses-without-waiting-for-its-candidate-suite",
            GATED,
            inputs={**PRE, "EvalSuite/e": _suite_input(Phase.WAITING, None)},
            phase=Phase.PENDING,
            reason="Pending",
            run_stages=["compress"],
        )
    ),
    GateCase(
        Case(
            "release-waits-for-the-candidate-to-be-evaluated",
            GATED,
            inputs={**PRE, "EvalSuite/e": _suite_input(Phase.WAITING, None)},
            runs=COMPRESSED,
            phase=Phase.WAITING,
            reason="GatePending",
            message_has="waiting for EvalSuite/e to evaluate the compressed candidate",
        ),
        gate="Unknown",
    ),
    GateCase(
        Case(
            "release-does-not-trust-a-pass-about-an-earlier-candidate",
            GATED,
            inputs={**PRE, "EvalSuite/e": _suite_input(Phase.SUCCEEDED, OLD, gate=True)},
            runs=COMPRESSED,
            phase=Phase.WAITING,
            reason="GatePending",
        ),
        gate="Unknown",
    ),
    GateCase(
        Case(
            "release-does-not-trust-a-stale-pass-while-its-candidate-is-evaluated",
            GATED,
            inputs={**PRE, "EvalSuite/e": _suite_input(Phase.RUNNING, CM, gate=True)},
            runs=COMPRESSED,
            phase=Phase.WAITING,
            reason="GatePending",
            message_has="is evaluating the compressed candidate",
        ),
        gate="Unknown",
    ),
    GateCase(
        Case(
            "candidate-failing-its-thresholds-is-not-served",
            GATED,
            inputs={**PRE, "EvalSuite/e": _suite_input(Phase.SUCCEEDED, CM, gate=False)},
            runs=COMPRESSED,
            phase=Phase.FAILED,
            reason="GateFailed",
            message_has="gate did not pass on the compressed candidate: mc.acc >= 0.5: 0.2 FAILED",
        ),
        gate="False",
    ),
    GateCase(
        Case(
            "candidate-the-suite-could-not-evaluate-is-not-served",
            GATED,
            inputs={**PRE, "EvalSuite/e": _suite_input(Phase.FAILED, CM)},
            runs=COMPRESSED,
            phase=Phase.FAILED,
            reason="InputFailed",
            message_has="CUDA out of memory",
        ),
        gate="False",
    ),
    GateCase(
        Case(
            "candidate-that-passed-is-served",
            GATED,
            inputs={**PRE, "EvalSuite/e": _suite_input(Phase.SUCCEEDED, CM, gate=True)},
            runs=COMPRESSED,
            phase=Phase.RUNNING,
            reason="Deploying",
            run_stages=["serve"],
        ),
        gate="True",
    ),
    GateCase(
        Case(
            "candidate-that-passed-serves",
            GATED,
            inputs={**PRE, "EvalSuite/e": _suite_input(Phase.SUCCEEDED, CM, gate=True)},
            runs={**COMPRESSED, "serve": _run(StageName.SERVE, RunState.READY, endpoint="http://r:8000/v1")},
            phase=Phase.SERVING,
            ready="True",
            reason="Serving",
            run_stages=["serve"],
        ),
        gate="True",
    ),
]


@pytest.mark.parametrize("gc", CASES, ids=[c.case.name for c in CASES])
def test_candidate_gate(gc: GateCase) -> None:
    case = gc.case
    decision = reconcile(_observed(case), now=NOW)
    status = decision.status
    ready = status.condition("Ready")
    assert status.phase is case.phase
    assert ready is not None and ready.status.value == case.ready and ready.reason == case.reason
    assert case.message_has in ready.message, ready.message
    assert [r.stage.value for r in decision.runs] == case.run_stages
    if gc.gate is not None:
        gate = status.condition("GatePassed")
        assert gate is not None and gate.status.value == gc.gate
    if gc.evaluated is not None:
        assert status.artifacts["evaluatedModel"] == gc.evaluated
    for k, artifacts in gc.inputs_of_run.items():
        assert decision.runs[0].spec.inputs[k].artifacts == artifacts


def test_an_older_release_keeps_serving_while_its_successor_is_gated_and_after_it_failed() -> None:
    old = ObservedRun("r-serve-old000", "r-old", RunState.READY, StageName.SERVE, endpoint="http://old/v1")
    for name in ("release-waits-for-the-candidate-to-be-evaluated", "candidate-failing-its-thresholds-is-not-served"):
        (gc,) = [c for c in CASES if c.case.name == name]
        obs = _observed(gc.case)
        decision = reconcile(type(obs)(**{**obs.__dict__, "runs": {**obs.runs, old.name: old}}), now=NOW)
        ready = decision.status.condition("Ready")
        assert ready is not None and ready.status.value == "True", name
        assert old.name not in decision.delete and decision.runs == []


def test_the_release_run_does_not_depend_on_its_candidate_suite_but_the_suite_run_follows_the_candidate() -> None:
    """No cycle in the run identities: the suite's result is not an input of the release."""
    pending = reconcile(
        _observed(Case("a", GATED, inputs={**PRE, "EvalSuite/e": _suite_input(Phase.WAITING, None)})), now=NOW
    )
    judged = reconcile(
        _observed(Case("b", GATED, inputs={**PRE, "EvalSuite/e": _suite_input(Phase.SUCCEEDED, CM, gate=True)})),
        now=NOW,
    )
    assert pending.status.run_id == judged.status.run_id
    assert "EvalSuite/e" not in pending.runs[0].spec.inputs

    def suite_run(model: str) -> str:
        inputs = {"ModelRelease/r": _release_input(Phase.WAITING, {"model": model})}
        return reconcile(_observed(Case("s", CANDIDATE_SUITE, inputs=inputs)), now=NOW).runs[0].run_id

    assert suite_run(CM) != suite_run(OLD)


def test_a_suite_of_the_uncompressed_model_still_gates_before_compression() -> None:
    """An input gate (the suite evaluates the AlignmentJob/PretrainJob) is waited for, as before."""
    legacy_spec = {"modelRef": {"kind": "PretrainJob", "name": "p"}, "tasks": TASKS}
    unready = InputState("EvalSuite", "e", True, Status(phase=Phase.RUNNING), legacy_spec)
    decision = reconcile(_observed(Case("legacy", GATED, inputs={**PRE, "EvalSuite/e": unready})), now=NOW)
    ready = decision.status.condition("Ready")
    assert decision.runs == [] and ready is not None and ready.reason == "WaitingForInput"


def test_the_candidate_reference_waits_for_compression_not_for_ready() -> None:
    (ref,) = [r for r in references(CANDIDATE_SUITE) if r.kind == "ModelRelease"]
    assert ref.candidate and not ref.needs_ready and ref.field == "spec.modelRef"
    assert run_id(GATED, {}) == run_id(GATED, {})


def _write(directory: Path, docs: Sequence[Mapping[str, object]]) -> Path:
    directory.mkdir()
    (directory / "all.yaml").write_text(yaml.safe_dump_all(docs))
    return directory


def _doc(kind: str, name: str, spec: Mapping[str, object]) -> dict[str, object]:
    return {"apiVersion": "lmforge.io/v1alpha1", "kind": kind, "metadata": {"name": name}, "spec": spec}


BASE = [
    _doc("Dataset", "d", {"sources": [{"name": "s", "uri": "x.txt", "license": "MIT"}]}),
    _doc("PretrainJob", "p", {"datasetRef": {"name": "d"}, "training": {"maxSteps": 10}}),
]


def test_a_release_and_the_suite_of_its_candidate_are_no_cycle_and_compress_first(tmp_path: Path) -> None:
    docs = [
        _doc("EvalSuite", "e", SUITE_SPEC),
        _doc("ModelRelease", "r", GATED.spec.model_dump(mode="json", by_alias=True, exclude_none=True)),
        *BASE,
    ]
    manifests, problems = validate_paths([_write(tmp_path / "m", docs)])
    assert problems == []
    order = [f"{r.kind}/{r.metadata.name}" for r in dependency_order([m.resource for m in manifests])]
    assert order.index("ModelRelease/r") < order.index("EvalSuite/e")


def test_gating_a_release_on_its_own_endpoint_is_refused_with_the_fix(tmp_path: Path) -> None:
    smoke = {"endpoint": {"releaseRef": {"name": "r"}}, "tasks": TASKS}
    docs = [
        _doc("EvalSuite", "e", smoke),
        _doc("ModelRelease", "r", GATED.spec.model_dump(mode="json", by_alias=True, exclude_none=True)),
        *BASE,
    ]
    _, problems = validate_paths([_write(tmp_path / "m", docs)])
    fields = {(p.resource, p.field): p.message for p in problems}
    message = fields[("ModelRelease/r", "spec.evalSuiteRef")]
    assert "evaluates this release's endpoint" in message and "modelRef {kind: ModelRelease, name: r}" in message
