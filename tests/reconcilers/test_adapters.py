"""LoRA adapters as named table cases: the adapter set is no part of a release's identity, so a
changed `serving.loraAdapters` keeps the same server and the decision says what to load into it and
unload from it (the set the server reports vs the set wanted); a backend that cannot change a running
server (the operator) reports none and is told nothing."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from lmforge.api.contract import InputArtifacts, StageName
from lmforge.api.meta import Condition, ConditionStatus, Phase, Status
from lmforge.operator.reconcile import InputState, ObservedRun, RunState, reconcile
from lmforge.operator.reconcile.adapters import change
from lmforge.operator.reconcile.runs import run_id
from lmforge.operator.reconcile.types import AdapterChange

from .test_reconcile import NOW, Case, _observed, _ready, _res, _result, _run

URL = "http://127.0.0.1:8000/v1"
A, B, C = (f"file:///s/alignmentjobs/default/{n}/run/adapter" for n in "abc")
PRE = {"PretrainJob/p": _ready("PretrainJob", "p")}


def release(*adapters: str, **serving: Any) -> Any:
    return _res(
        "ModelRelease",
        "r",
        {
            "modelRef": {"kind": "PretrainJob", "name": "p"},
            "serving": {"loraAdapters": [{"name": n} for n in adapters], **serving},
        },
    )


def job(name: str, uri: str) -> InputState:
    return _ready("AlignmentJob", name, {"adapter": uri})


COMPRESSED = _run(StageName.COMPRESS, RunState.SUCCEEDED, result=_result(StageName.COMPRESS, {"model": "cm"}))


def serving(adapters: dict[str, str] | None, errors: dict[str, tuple[str, str]] | None = None) -> ObservedRun:
    return _run(StageName.SERVE, RunState.READY, endpoint=URL, adapters=adapters, adapter_errors=errors or {})


@dataclass
class AdapterCase:
    name: str
    resource: Any
    inputs: dict[str, InputState]
    seen: ObservedRun
    load: dict[str, str] = field(default_factory=dict)
    unload: tuple[str, ...] = ()
    served: list[str] = field(default_factory=list)
    message_has: str = ""
    events: list[str] = field(default_factory=list)


CASES = [
    AdapterCase(
        "a-new-adapter-is-loaded-into-the-running-server",
        release("a", "b"),
        {**PRE, "AlignmentJob/a": job("a", A), "AlignmentJob/b": job("b", B)},
        serving({"a": A}),
        load={"b": B},
        served=["a"],
        message_has="adapters a",
        events=["AdaptersChanged"],
    ),
    AdapterCase(
        "an-adapter-no-longer-listed-is-unloaded",
        release("a"),
        {**PRE, "AlignmentJob/a": job("a", A)},
        serving({"a": A, "b": B}),
        unload=("b",),
        served=["a", "b"],
        events=["AdaptersChanged"],
    ),
    AdapterCase(
        "a-republished-adapter-is-unloaded-then-loaded-again",
        release("a"),
        {**PRE, "AlignmentJob/a": job("a", C)},
        serving({"a": A}),
        load={"a": C},
        unload=("a",),
        served=["a"],
        events=["AdaptersChanged"],
    ),
    AdapterCase(
        "the-server-answering-to-exactly-the-wanted-set-is-left-alone",
        release("a", "b"),
        {**PRE, "AlignmentJob/a": job("a", A), "AlignmentJob/b": job("b", B)},
        serving({"b": B, "a": A}),
        served=["a", "b"],
        message_has="serving at http://127.0.0.1:8000/v1; adapters a, b",
    ),
    AdapterCase(
        "an-adapter-whose-job-is-not-ready-is-not-waited-for",
        release("a", "b"),
        {**PRE, "AlignmentJob/a": job("a", A)},
        serving({"a": A}),
        served=["a"],
        message_has="not served until Ready with an adapter: AlignmentJob/b",
    ),
    AdapterCase(
        "an-adapter-the-server-refused-is-not-tried-again",
        release("a"),
        {**PRE, "AlignmentJob/a": job("a", A)},
        serving({}, {"a": (A, "LoRA rank 64 is greater than max_lora_rank 16")}),
        message_has="adapter a failed to load: LoRA rank 64",
        events=["AdapterFailed"],
    ),
    AdapterCase(
        "a-backend-that-cannot-change-a-running-server-is-told-nothing",
        release("a", "b"),
        {**PRE, "AlignmentJob/a": job("a", A), "AlignmentJob/b": job("b", B)},
        serving(None),
        served=["a", "b"],
    ),
    AdapterCase(
        "max-loras-serves-with-lora-on-before-any-adapter",
        release(maxLoras=2),
        PRE,
        serving({}),
        message_has="no adapter loaded",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_adapters(case: AdapterCase) -> None:
    status = Status(
        phase=Phase.SERVING,
        conditions=[Condition(type="Ready", status=ConditionStatus.TRUE, reason="Serving", message="serving")],
    )
    base = Case(case.name, case.resource, inputs=case.inputs, status=status)
    base.runs = {"compress": COMPRESSED, "serve": case.seen}
    decision = reconcile(_observed(base), NOW)
    assert decision.status.phase is Phase.SERVING
    serve = [r for r in decision.runs if r.stage is StageName.SERVE]
    assert len(serve) == 1 and not decision.delete
    want = [AdapterChange(serve[0].name, case.load, case.unload)] if case.load or case.unload else []
    assert decision.adapters == want
    assert decision.status.adapters == case.served
    ready = decision.status.condition("Ready")
    assert ready is not None and ready.status is ConditionStatus.TRUE and case.message_has in ready.message
    assert [e.reason for e in decision.events if e.reason.startswith("Adapter")] == case.events


def test_the_adapter_set_is_no_part_of_the_run_identity() -> None:
    """Adding, removing or republishing an adapter keeps the run (the same server); turning LoRA on,
    or changing `maxLoras`, makes a new one."""
    inputs = {"PretrainJob/p": InputArtifacts(kind="PretrainJob", name="p", artifacts={"model": "m"})}
    with_a = {**inputs, "AlignmentJob/a": InputArtifacts(kind="AlignmentJob", name="a", artifacts={"adapter": A})}
    with_ab = {**with_a, "AlignmentJob/b": InputArtifacts(kind="AlignmentJob", name="b", artifacts={"adapter": B})}
    republished = {**with_a, "AlignmentJob/a": InputArtifacts(kind="AlignmentJob", name="a", artifacts={"adapter": C})}
    one = run_id(release("a"), with_a)
    assert run_id(release("a", "b"), with_ab) == one
    assert run_id(release("a"), republished) == one
    assert run_id(release("b"), inputs) == one  # b not Ready yet: still the same server
    assert run_id(release(), inputs) != one  # no adapter, no maxLoras: LoRA off
    assert run_id(release(maxLoras=4), inputs) != one
    assert run_id(release("a"), {**with_a, "PretrainJob/p": inputs["PretrainJob/p"].model_copy()}) == one
    changed_model = {**with_a, "PretrainJob/p": InputArtifacts(kind="PretrainJob", name="p", artifacts={"model": "m2"})}
    assert run_id(release("a"), changed_model) != one


def test_change_is_empty_when_nothing_differs() -> None:
    seen = serving({"a": A})
    assert change("r-serve", {"a": A}, seen) is None
    assert change("r-serve", {}, seen) == AdapterChange("r-serve", {}, ("a",))
    # an adapter served from an artifact this backend does not know: unloaded, then loaded again
    assert change("r-serve", {"a": A}, serving({"a": ""})) == AdapterChange("r-serve", {"a": A}, ("a",))
