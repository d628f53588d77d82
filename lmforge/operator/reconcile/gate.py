"""A release's gate: may this ModelRelease serve, judging by its EvalSuite?

Two kinds of gate, told apart by what the suite evaluates:

- **Candidate gate** (the suite's `modelRef` is this ModelRelease): the suite evaluates the
  *compressed* model that will be served. Order: compress → the suite evaluates that candidate →
  gate → serve. The release does not wait for the suite before compressing, and the suite's result
  counts only when it is about the release's current candidate (`status.artifacts.evaluatedModel`
  equals the release's `model`), so a result about an earlier candidate is never trusted.
- **Input gate** (the suite evaluates anything else, e.g. the uncompressed AlignmentJob): the suite
  is an input the release waits for before compressing, as before; its gate must have passed.

The same rule judges a **smoke suite** (`serving.smokeEvalSuiteRef`) on a release's new server
during a blue-green switch: its result counts only when it is about that server's URL.

Pure: reads the suite as the referrer sees it (`InputState`) and returns a verdict.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from lmforge.api.contract import ArtifactName
from lmforge.api.kinds import evaluates_candidate
from lmforge.api.meta import ConditionStatus, ConditionType, Phase, Reason, Status
from lmforge.api.release import ModelRelease
from lmforge.operator.reconcile.types import InputState


class Verdict(StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    """The thresholds did not hold, or the suite could not evaluate the candidate."""
    PENDING = "pending"
    """The suite has not (yet) judged the current candidate."""


@dataclass(frozen=True)
class GateResult:
    verdict: Verdict
    reason: Reason
    message: str


def candidate_gated(release: ModelRelease, suite: InputState | None) -> bool:
    """Whether the release's `evalSuiteRef` names a suite that evaluates this release's candidate."""
    return (
        release.spec.eval_suite_ref is not None
        and suite is not None
        and evaluates_candidate(suite.spec, release.metadata.name)
    )


def release_gate(release: ModelRelease, suite: InputState | None, candidate: str | None) -> GateResult | None:
    """The verdict of the release's gate (None: it has no `evalSuiteRef`). `candidate`: the URI of the
    release's compressed model, once published."""
    if release.spec.eval_suite_ref is None:
        return None
    key = f"EvalSuite/{release.spec.eval_suite_ref.name}"
    status = suite.status if suite is not None else None
    if not candidate_gated(release, suite):
        gate = status.condition(ConditionType.GATE_PASSED.value) if status is not None else None
        if gate is None or gate.status is not ConditionStatus.TRUE:
            return GateResult(
                Verdict.FAILED,
                Reason.GATE_FAILED,
                f"{key} gate did not pass: {gate.message if gate else 'no gate result'}",
            )
        return GateResult(Verdict.PASSED, Reason.GATE_PASSED, f"{key}: {gate.message}")
    return _judged(key, status, ArtifactName.EVALUATED_MODEL, candidate, "the compressed candidate")


def smoke_gate(release: ModelRelease, suite: InputState | None, endpoint: str | None) -> GateResult | None:
    """The verdict of the release's smoke suite on its new server at `endpoint` (None: no smoke suite)."""
    ref = release.spec.serving.smoke_eval_suite_ref
    if ref is None:
        return None
    status = suite.status if suite is not None else None
    return _judged(
        f"EvalSuite/{ref.name}", status, ArtifactName.EVALUATED_ENDPOINT, endpoint, f"the new server at {endpoint}"
    )


def _judged(key: str, status: Status | None, evaluated: ArtifactName, expected: str | None, what: str) -> GateResult:
    """A suite's verdict, counted only when its current run is about `expected` (its `evaluated`
    artifact): a result about an earlier model or server, or one still being computed, is pending."""
    gate = status.condition(ConditionType.GATE_PASSED.value) if status is not None else None
    if expected is None or status is None or status.artifacts.get(evaluated.value) != expected:
        return GateResult(Verdict.PENDING, Reason.GATE_PENDING, f"waiting for {key} to evaluate {what}")
    if status.phase is Phase.FAILED:
        ready = status.condition(ConditionType.READY.value)
        return GateResult(
            Verdict.FAILED,
            Reason.INPUT_FAILED,
            f"{key} could not evaluate {what}: {ready.message if ready else 'no reason given'}",
        )
    if status.phase is not Phase.SUCCEEDED or gate is None:
        return GateResult(Verdict.PENDING, Reason.GATE_PENDING, f"{key} is evaluating {what}")
    if gate.status is not ConditionStatus.TRUE:
        return GateResult(Verdict.FAILED, Reason.GATE_FAILED, f"{key} gate did not pass on {what}: {gate.message}")
    return GateResult(Verdict.PASSED, Reason.GATE_PASSED, f"{key} on {what}: {gate.message}")
