"""A release's gate: may this ModelRelease serve, judging by its EvalSuite?

Two kinds of gate, told apart by what the suite evaluates:

- **Candidate gate** (the suite's `modelRef` is this ModelRelease): the suite evaluates the
  *compressed* model that will be served. Order: compress → the suite evaluates that candidate →
  gate → serve. The release does not wait for the suite before compressing, and the suite's result
  counts only when it is about the release's current candidate (`status.artifacts.evaluatedModel`
  equals the release's `model`), so a result about an earlier candidate is never trusted.
- **Input gate** (the suite evaluates anything else, e.g. the uncompressed AlignmentJob): the suite
  is an input the release waits for before compressing, as before; its gate must have passed.

Pure: reads the suite as the referrer sees it (`InputState`) and returns a verdict.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from lmforge.api.contract import ArtifactName
from lmforge.api.kinds import evaluates_candidate
from lmforge.api.meta import ConditionStatus, ConditionType, Phase, Reason
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
    return release.spec.eval_suite_ref is not None and suite is not None \
        and evaluates_candidate(suite.spec, release.metadata.name)


def release_gate(release: ModelRelease, suite: InputState | None, candidate: str | None) -> GateResult | None:
    """The verdict of the release's gate (None: it has no `evalSuiteRef`). `candidate`: the URI of the
    release's compressed model, once published."""
    if release.spec.eval_suite_ref is None:
        return None
    key = f"EvalSuite/{release.spec.eval_suite_ref.name}"
    status = suite.status if suite is not None else None
    gate = status.condition(ConditionType.GATE_PASSED.value) if status is not None else None
    if not candidate_gated(release, suite):
        if gate is None or gate.status is not ConditionStatus.TRUE:
            return GateResult(Verdict.FAILED, Reason.GATE_FAILED,
                              f"{key} gate did not pass: {gate.message if gate else 'no gate result'}")
        return GateResult(Verdict.PASSED, Reason.GATE_PASSED, f"{key}: {gate.message}")
    evaluated = status.artifacts.get(ArtifactName.EVALUATED_MODEL.value) if status is not None else None
    if candidate is None or status is None or evaluated != candidate:
        return GateResult(Verdict.PENDING, Reason.GATE_PENDING,
                          f"waiting for {key} to evaluate the compressed candidate {candidate}")
    if status.phase is Phase.FAILED:
        ready = status.condition(ConditionType.READY.value)
        return GateResult(Verdict.FAILED, Reason.INPUT_FAILED,
                          f"{key} could not evaluate the compressed candidate: "
                          f"{ready.message if ready else 'no reason given'}")
    if status.phase is not Phase.SUCCEEDED or gate is None:
        return GateResult(Verdict.PENDING, Reason.GATE_PENDING,
                          f"{key} is evaluating the compressed candidate {candidate}")
    if gate.status is not ConditionStatus.TRUE:
        return GateResult(Verdict.FAILED, Reason.GATE_FAILED,
                          f"{key} gate did not pass on the compressed candidate: {gate.message}")
    return GateResult(Verdict.PASSED, Reason.GATE_PASSED, f"{key} on the compressed candidate: {gate.message}")
