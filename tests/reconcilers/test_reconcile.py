"""The reconciler as named table cases: no cluster, no processes — just (observed) -> decision."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import pytest

from lmforge.api import KINDS
from lmforge.api.contract import ProgressRecord, RecordType, StageName
from lmforge.api.kinds import Resource
from lmforge.api.meta import Condition, ConditionStatus, Phase, Status
from lmforge.operator.reconcile import InputState, Observed, ObservedRun, RunState, reconcile
from lmforge.operator.reconcile.reconciler import expected_runs, secret_backoff

STORE = "s3://bucket/lmforge"
NOW = "2026-11-29T00:00:00Z"


def _res(kind: str, name: str, spec: dict[str, Any]) -> Resource:
    return KINDS[kind].model.model_validate(
        {"apiVersion": "lmforge.io/v1alpha1", "kind": kind, "metadata": {"name": name}, "spec": spec}
    )


DATASET = _res("Dataset", "d", {"sources": [{"name": "s", "uri": "x.txt", "license": "MIT"}], "workers": 2})
PRETRAIN = _res(
    "PretrainJob",
    "p",
    {"datasetRef": {"name": "d"}, "training": {"maxSteps": 10}, "topology": {"nodes": 4, "gpusPerNode": 8}},
)
SUITE = _res(
    "EvalSuite",
    "e",
    {
        "modelRef": {"kind": "PretrainJob", "name": "p"},
        "tasks": [{"name": "mc", "type": "multipleChoice", "dataUri": "x"}],
        "thresholds": ["mc.acc >= 0.5"],
    },
)
RELEASE = _res("ModelRelease", "r", {"modelRef": {"kind": "PretrainJob", "name": "p"}, "evalSuiteRef": {"name": "e"}})


def _ready(kind: str, name: str, artifacts: dict[str, str] | None = None, gate: bool | None = None) -> InputState:
    conds = [Condition(type="Ready", status=ConditionStatus.TRUE, reason="Completed")]
    if gate is not None:
        conds.append(
            Condition(
                type="GatePassed",
                status=ConditionStatus.TRUE if gate else ConditionStatus.FALSE,
                reason="GatePassed" if gate else "GateFailed",
                message="mc.acc >= 0.5: 0.2 FAILED",
            )
        )
    return InputState(
        kind,
        name,
        True,
        Status(
            phase=Phase.SUCCEEDED,
            conditions=conds,
            artifacts=artifacts or {"model": f"{STORE}/m"},
            lineage=["Dataset/d"],
        ),
    )


def _failed(kind: str, name: str) -> InputState:
    return InputState(
        kind,
        name,
        True,
        Status(
            phase=Phase.FAILED,
            conditions=[
                Condition(type="Ready", status=ConditionStatus.FALSE, reason="StageFailed", message="out of memory")
            ],
        ),
    )


def _result(stage: StageName, artifacts: dict[str, str], metrics: dict[str, float] | None = None) -> ProgressRecord:
    return ProgressRecord(type=RecordType.RESULT, stage=stage, run_id="x", artifacts=artifacts, metrics=metrics or {})


@dataclass
class Case:
    name: str
    resource: Resource | None
    inputs: dict[str, InputState] = field(default_factory=dict)
    runs: dict[str, ObservedRun] = field(default_factory=dict)  # keyed by stage value, renamed below
    status: Status = field(default_factory=Status)
    invalid: str | None = None
    missing: dict[str, tuple[str, ...]] = field(default_factory=dict)  # missing Secrets by stage value
    conflicts: dict[str, tuple[str, ...]] = field(default_factory=dict)  # foreign objects by stage value
    secret_waits: int = 0
    # expectations
    phase: Phase = Phase.PENDING
    ready: str = "False"
    reason: str = ""
    message_has: str = ""
    run_stages: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


def _observed(case: Case) -> Observed:
    base = Observed(
        resource=case.resource,
        kind=case.resource.kind if case.resource else "Dataset",
        name=case.resource.metadata.name if case.resource else "bad",
        generation=3,
        status=case.status,
        store=STORE,
        inputs=case.inputs,
        invalid=case.invalid,
    )
    names = {stage.value: name for name, stage, _ in expected_runs(base)}
    runs = {}
    for stage, run in case.runs.items():
        name = names.get(stage, stage)
        runs[name] = ObservedRun(**{**run.__dict__, "name": name})
    missing = {names.get(stage, stage): gaps for stage, gaps in case.missing.items()}
    conflicts = {names.get(stage, stage): found for stage, found in case.conflicts.items()}
    return Observed(
        **{
            **base.__dict__,
            "runs": runs,
            "missing_secrets": missing,
            "conflicts": conflicts,
            "secret_waits": case.secret_waits,
        }
    )


def _run(stage: StageName, state: RunState, **kw: Any) -> ObservedRun:
    return ObservedRun(name="?", run_id="?", state=state, stage=stage, **kw)


CASES = [
    Case(
        "invalid-spec-fails-without-runs",
        None,
        invalid="spec.training: set exactly one of maxSteps or tokens",
        phase=Phase.FAILED,
        reason="InvalidSpec",
        message_has="spec.training",
    ),
    Case(
        "waits-for-missing-dataset",
        PRETRAIN,
        phase=Phase.WAITING,
        reason="WaitingForInput",
        message_has="Dataset/d (spec.datasetRef) does not exist",
    ),
    Case(
        "waits-for-unready-dataset",
        PRETRAIN,
        inputs={"Dataset/d": InputState("Dataset", "d", True, Status())},
        phase=Phase.WAITING,
        reason="WaitingForInput",
        message_has="is not Ready",
    ),
    Case(
        "fails-when-dataset-failed",
        PRETRAIN,
        inputs={"Dataset/d": _failed("Dataset", "d")},
        phase=Phase.FAILED,
        reason="InputFailed",
        message_has="Dataset/d (spec.datasetRef) failed: out of memory",
    ),
    Case(
        "starts-pretrain-when-dataset-ready",
        PRETRAIN,
        inputs={"Dataset/d": _ready("Dataset", "d", {"shards": f"{STORE}/s", "tokenizer": f"{STORE}/t"})},
        phase=Phase.PENDING,
        reason="Pending",
        run_stages=["pretrain"],
    ),
    Case(
        "relays-progress-while-running",
        PRETRAIN,
        inputs={"Dataset/d": _ready("Dataset", "d")},
        runs={
            "pretrain": _run(
                StageName.PRETRAIN,
                RunState.RUNNING,
                progress=ProgressRecord(stage=StageName.PRETRAIN, run_id="x", step=5, total=10, metrics={"loss": 3.25}),
            )
        },
        phase=Phase.RUNNING,
        reason="Running",
        run_stages=["pretrain"],
        extra={"percent": 50.0, "loss": 3.25},
    ),
    Case(
        "stage-failure-is-reported-not-retried-here",
        PRETRAIN,
        inputs={"Dataset/d": _ready("Dataset", "d")},
        runs={"pretrain": _run(StageName.PRETRAIN, RunState.FAILED, message="loss is NaN for 5 steps")},
        phase=Phase.FAILED,
        reason="StageFailed",
        message_has="loss is NaN",
    ),
    Case(
        "result-makes-it-ready-and-stops-running",
        PRETRAIN,
        inputs={"Dataset/d": _ready("Dataset", "d")},
        runs={
            "pretrain": _run(
                StageName.PRETRAIN,
                RunState.SUCCEEDED,
                result=_result(StageName.PRETRAIN, {"model": f"{STORE}/m"}, {"loss": 1.5}),
            )
        },
        phase=Phase.SUCCEEDED,
        ready="True",
        reason="Completed",
        extra={"artifact": "model"},
    ),
    Case(
        "result-without-backend-object-still-counts",
        DATASET,
        runs={
            "dataset": _run(
                StageName.DATASET,
                RunState.PENDING,
                result=_result(StageName.DATASET, {"shards": "s"}, {"tokens": 1000.0}),
            )
        },
        phase=Phase.SUCCEEDED,
        ready="True",
        reason="Completed",
    ),
    Case(
        "eval-gate-fails-but-suite-is-ready",
        SUITE,
        inputs={"PretrainJob/p": _ready("PretrainJob", "p")},
        runs={
            "evaluate": _run(
                StageName.EVALUATE,
                RunState.SUCCEEDED,
                result=_result(StageName.EVALUATE, {"results": "r"}, {"mc.acc": 0.25}),
            )
        },
        phase=Phase.SUCCEEDED,
        ready="True",
        reason="Completed",
        extra={"gate": "False"},
    ),
    Case(
        "eval-gate-passes",
        SUITE,
        inputs={"PretrainJob/p": _ready("PretrainJob", "p")},
        runs={
            "evaluate": _run(
                StageName.EVALUATE,
                RunState.SUCCEEDED,
                result=_result(StageName.EVALUATE, {"results": "r"}, {"mc.acc": 0.75}),
            )
        },
        phase=Phase.SUCCEEDED,
        ready="True",
        extra={"gate": "True"},
    ),
    Case(
        "release-does-not-deploy-when-gate-failed",
        RELEASE,
        inputs={"PretrainJob/p": _ready("PretrainJob", "p"), "EvalSuite/e": _ready("EvalSuite", "e", gate=False)},
        runs={
            "compress": _run(
                StageName.COMPRESS, RunState.SUCCEEDED, result=_result(StageName.COMPRESS, {"model": "cm"})
            )
        },
        phase=Phase.FAILED,
        reason="GateFailed",
        message_has="gate did not pass",
    ),
    Case(
        "release-serves-after-gate",
        RELEASE,
        inputs={"PretrainJob/p": _ready("PretrainJob", "p"), "EvalSuite/e": _ready("EvalSuite", "e", gate=True)},
        runs={
            "compress": _run(
                StageName.COMPRESS, RunState.SUCCEEDED, result=_result(StageName.COMPRESS, {"model": "cm"})
            )
        },
        phase=Phase.RUNNING,
        reason="Deploying",
        run_stages=["serve"],
    ),
    Case(
        "release-ready-when-serving",
        RELEASE,
        inputs={"PretrainJob/p": _ready("PretrainJob", "p"), "EvalSuite/e": _ready("EvalSuite", "e", gate=True)},
        runs={
            "compress": _run(
                StageName.COMPRESS, RunState.SUCCEEDED, result=_result(StageName.COMPRESS, {"model": "cm"})
            ),
            "serve": _run(StageName.SERVE, RunState.READY, endpoint="http://r:8000/v1"),
        },
        phase=Phase.SERVING,
        ready="True",
        reason="Serving",
        run_stages=["serve"],
        extra={"endpoint": "http://r:8000/v1"},
    ),
    Case(
        "missing-s3-secret-holds-back-the-job",
        DATASET,
        missing={"dataset": ("Secret own-s3 (spec.compute.s3CredentialsSecret) to exist",)},
        phase=Phase.WAITING,
        reason="WaitingForSecret",
        message_has="dataset stage waits for Secret own-s3 (spec.compute.s3CredentialsSecret)",
        extra={"requeue": 1.0},
    ),
    Case(
        "secret-retries-back-off",
        DATASET,
        missing={"dataset": ("key token in Secret hf (x)",)},
        secret_waits=3,
        phase=Phase.WAITING,
        reason="WaitingForSecret",
        message_has="key token in Secret hf",
        extra={"requeue": 8.0},
    ),
    Case(
        "an-object-of-a-run-s-name-that-is-not-ours-is-never-adopted",
        DATASET,
        conflicts={"dataset": ("ConfigMap d-dataset-x-spec",)},
        missing={"dataset": ("Secret own-s3 (spec.compute.s3CredentialsSecret) to exist",)},
        phase=Phase.FAILED,
        reason="NameConflict",
        message_has="ConfigMap d-dataset-x-spec already exist(s) and is not this resource's",
        extra={"requeue": 1.0},
    ),
    Case(
        "a-created-run-is-not-held-back-by-a-conflict",
        DATASET,
        runs={"dataset": _run(StageName.DATASET, RunState.RUNNING)},
        conflicts={"dataset": ("Service x",)},
        phase=Phase.RUNNING,
        reason="Running",
        run_stages=["dataset"],
    ),
    Case(
        "missing-secret-does-not-hold-back-a-created-job",
        DATASET,
        runs={"dataset": _run(StageName.DATASET, RunState.PENDING)},
        missing={"dataset": ("Secret own-s3 (spec.compute.s3CredentialsSecret) to exist",)},
        phase=Phase.PENDING,
        reason="Pending",
        run_stages=["dataset"],
    ),
    Case(
        "serve-waits-for-its-api-key-secret",
        RELEASE,
        inputs={"PretrainJob/p": _ready("PretrainJob", "p"), "EvalSuite/e": _ready("EvalSuite", "e", gate=True)},
        runs={
            "compress": _run(
                StageName.COMPRESS, RunState.SUCCEEDED, result=_result(StageName.COMPRESS, {"model": "cm"})
            )
        },
        missing={"serve": ("Secret api (spec.serving.apiKeySecret) to exist",)},
        phase=Phase.WAITING,
        reason="WaitingForSecret",
        message_has="serve stage waits for Secret api",
    ),
    Case(
        "stuck-pod-reason-is-relayed",
        DATASET,
        runs={
            "dataset": _run(
                StageName.DATASET,
                RunState.PENDING,
                message="pod d-0: container trainer: ImagePullBackOff: back-off pulling",
            )
        },
        phase=Phase.PENDING,
        reason="Pending",
        message_has="ImagePullBackOff: back-off pulling",
        run_stages=["dataset"],
    ),
]


def _case(name: str) -> Case:
    """A table case by its name (the list's order carries no meaning)."""
    (case,) = [c for c in CASES if c.name == name]
    return case


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_reconcile(case: Case) -> None:
    decision = reconcile(_observed(case), now=NOW)
    status = decision.status
    ready = status.condition("Ready")
    assert status.phase is case.phase
    assert ready is not None and ready.status.value == case.ready
    if case.reason:
        assert ready.reason == case.reason
    if case.message_has:
        assert case.message_has in ready.message, ready.message
    assert [r.stage.value for r in decision.runs] == case.run_stages
    assert status.observed_generation == 3
    if "percent" in case.extra:
        assert status.progress is not None and status.progress.percent == case.extra["percent"]
    if "loss" in case.extra:
        assert status.metrics["loss"] == case.extra["loss"]
    if "artifact" in case.extra:
        assert case.extra["artifact"] in status.artifacts and status.lineage == ["Dataset/d"]
    if "gate" in case.extra:
        gate = status.condition("GatePassed")
        assert gate is not None and gate.status.value == case.extra["gate"]
    if "endpoint" in case.extra:
        assert status.endpoint == case.extra["endpoint"]
    if "requeue" in case.extra:
        assert decision.requeue_after == case.extra["requeue"]


def test_secret_backoff_doubles_up_to_a_minute() -> None:
    assert [secret_backoff(n) for n in (0, 1, 2, 5, 6, 100)] == [1.0, 2.0, 4.0, 32.0, 60.0, 60.0]


def test_waiting_for_a_secret_posts_one_event_not_one_per_look() -> None:
    case = _case("missing-s3-secret-holds-back-the-job")
    first = reconcile(_observed(case), now=NOW)
    again = reconcile(Observed(**{**_observed(case).__dict__, "status": first.status}), now=NOW)
    assert [e.reason for e in first.events] == ["WaitingForSecret"] and first.events[0].type == "Warning"
    assert again.events == [] and again.status == first.status


def test_older_release_keeps_serving_while_the_new_one_waits_for_a_secret() -> None:
    case = _case("serve-waits-for-its-api-key-secret")
    old = ObservedRun("r-serve-old000", "r-old", RunState.READY, StageName.SERVE, endpoint="http://old/v1")
    obs = _observed(case)
    decision = reconcile(Observed(**{**obs.__dict__, "runs": {**obs.runs, old.name: old}}), now=NOW)
    ready = decision.status.condition("Ready")
    assert ready is not None and ready.status.value == "True" and ready.reason == "WaitingForSecret"
    assert old.name not in decision.delete and decision.runs == []


def _first(resource: Resource, inputs: dict[str, InputState], runs: dict[str, ObservedRun] | None = None) -> Any:
    return reconcile(_observed(Case("x", resource, inputs=inputs, runs=runs or {})), now=NOW).runs[0]


def test_api_keys_become_secret_env_of_the_stage_that_reads_them() -> None:
    key = {"name": "api", "key": "token"}
    release = _res("ModelRelease", "r", {"modelRef": {"uri": "s3://b/m"}, "serving": {"apiKeySecret": key}})
    compressed = {
        "compress": _run(StageName.COMPRESS, RunState.SUCCEEDED, result=_result(StageName.COMPRESS, {"model": "cm"}))
    }
    compress, serve = _first(release, {}), _first(release, {}, compressed)
    assert compress.secret_env == {} and serve.stage is StageName.SERVE
    assert {k: v.model_dump() for k, v in serve.secret_env.items()} == {"LMFORGE_API_KEY": key}

    tasks = [{"name": "mc", "type": "multipleChoice", "dataUri": "x"}]
    by_url = _res("EvalSuite", "e", {"endpoint": {"url": "http://x/v1", "apiKeySecret": key}, "tasks": tasks})
    assert {k: v.model_dump() for k, v in _first(by_url, {}).secret_env.items()} == {"LMFORGE_ENDPOINT_API_KEY": key}
    by_release = _res("EvalSuite", "e", {"endpoint": {"releaseRef": {"name": "r"}}, "tasks": tasks})
    serving = _ready("ModelRelease", "r")
    serving = InputState("ModelRelease", "r", True, serving.status, {"serving": {"apiKeySecret": key}})
    assert {k: v.model_dump() for k, v in _first(by_release, {"ModelRelease/r": serving}).secret_env.items()} == {
        "LMFORGE_ENDPOINT_API_KEY": key
    }
    no_key = InputState("ModelRelease", "r", True, serving.status, {"serving": {}})
    assert _first(by_release, {"ModelRelease/r": no_key}).secret_env == {}


def test_stage_run_carries_topology_inputs_and_a_stable_identity() -> None:
    case = _case("starts-pretrain-when-dataset-ready")
    first = reconcile(_observed(case), now=NOW).runs[0]
    again = reconcile(_observed(case), now=NOW).runs[0]
    assert first == again
    assert (first.nodes, first.nproc_per_node, first.gpus_per_node) == (4, 8, 8)
    assert first.spec.inputs["Dataset/d"].artifacts["shards"] == f"{STORE}/s"
    assert first.spec.output == f"pretrainjobs/default/p/{first.run_id}"
    assert len(first.name) <= 52 and first.name.startswith("p-pretrain-")


def test_long_names_sharing_a_prefix_never_collide() -> None:
    spec = {"sources": [{"name": "s", "uri": "x.txt", "license": "MIT"}]}
    stem = "team-a-llama-7b-tokenized-corpus-2026-11-"  # 41 characters, more than a run name keeps
    names = [stem + tail for tail in ("run-1", "run-2", "x" * (63 - len(stem)))]
    runs = [reconcile(_observed(Case("x", _res("Dataset", n, spec))), now=NOW).runs[0] for n in names]
    assert len({r.name for r in runs}) == len(runs), [r.name for r in runs]
    assert len({r.run_id.rsplit("-", 1)[-1] for r in runs}) == 1  # same spec: only the names differ
    dns_label = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    for run in runs:
        assert len(run.name) <= 52 and dns_label.match(run.name), run.name
        assert run.name.startswith(stem[:30]) and run.name.split("-")[-2] == "dataset"
    again = reconcile(_observed(Case("x", _res("Dataset", names[0], spec))), now=NOW).runs[0]
    assert again.name == runs[0].name  # stable
    short = reconcile(_observed(Case("x", _res("Dataset", "d", spec))), now=NOW).runs[0]
    assert short.name == f"d-dataset-{short.run_id.rsplit('-', 1)[-1][:6]}"  # names that fit are unchanged


def test_changed_spec_is_a_new_run_and_the_old_one_is_deleted() -> None:
    case = _case("starts-pretrain-when-dataset-ready")
    old = reconcile(_observed(case), now=NOW).runs[0]
    changed = _res("PretrainJob", "p", {"datasetRef": {"name": "d"}, "training": {"maxSteps": 20}})
    obs = _observed(Case("x", changed, inputs=case.inputs))
    obs = Observed(
        **{**obs.__dict__, "runs": {old.name: ObservedRun(old.name, old.run_id, RunState.RUNNING, StageName.PRETRAIN)}}
    )
    decision = reconcile(obs, now=NOW)
    assert decision.runs[0].run_id != old.run_id
    assert decision.delete == [old.name]


def test_dataset_workers_become_indexed_workers() -> None:
    run = reconcile(_observed(Case("d", DATASET)), now=NOW).runs[0]
    assert run.workers == 2 and run.spec.worker.count == 2


def test_unchanged_status_keeps_transition_times() -> None:
    case = _case("waits-for-missing-dataset")
    first = reconcile(_observed(case), now=NOW).status
    second = reconcile(Observed(**{**_observed(case).__dict__, "status": first}), now="2030-01-01T00:00:00Z")
    assert second.status == first
    assert second.events == []


def test_old_release_keeps_serving_until_new_is_ready() -> None:
    case = _case("release-serves-after-gate")
    old = ObservedRun("r-serve-old000", "r-old", RunState.READY, StageName.SERVE, endpoint="http://old/v1")
    obs = _observed(case)
    obs = Observed(**{**obs.__dict__, "runs": {**obs.runs, old.name: old}})
    decision = reconcile(obs, now=NOW)
    assert old.name not in decision.delete
    ready = decision.status.condition("Ready")
    assert ready is not None and ready.status.value == "True" and "previous release keeps serving" in ready.message


@pytest.mark.parametrize("state", [RunState.RUNNING, RunState.PENDING])
def test_old_release_momentarily_not_ready_is_kept_until_the_new_one_is_ready(state: RunState) -> None:
    case = _case("release-serves-after-gate")
    old = ObservedRun("r-serve-old000", "r-old", state, StageName.SERVE)  # e.g. its pod restarting
    obs = _observed(case)
    obs = Observed(**{**obs.__dict__, "runs": {**obs.runs, old.name: old}})
    decision = reconcile(obs, now=NOW)
    assert old.name not in decision.delete
    ready = decision.status.condition("Ready")
    assert ready is not None and ready.status.value == "False" and ready.reason == "Deploying"
    assert "previous release keeps serving" not in ready.message  # it does not, right now
    new = next(r for r in decision.runs if r.stage is StageName.SERVE)
    served = ObservedRun(new.name, new.run_id, RunState.READY, StageName.SERVE, endpoint="http://r:8000/v1")
    after = reconcile(Observed(**{**obs.__dict__, "runs": {**obs.runs, old.name: old, new.name: served}}), now=NOW)
    assert old.name in after.delete  # once the new one serves, the old one goes
    failed = ObservedRun("r-serve-old000", "r-old", RunState.FAILED, StageName.SERVE)
    gone = reconcile(Observed(**{**obs.__dict__, "runs": {**obs.runs, old.name: failed}}), now=NOW)
    assert old.name in gone.delete  # a failed old server serves nothing: no reason to keep it


def test_no_serve_ends_a_release_succeeded_after_compression_with_the_same_run() -> None:
    case = Case(
        "no-serve",
        RELEASE,
        inputs={"PretrainJob/p": _ready("PretrainJob", "p"), "EvalSuite/e": _ready("EvalSuite", "e", gate=True)},
        runs={
            "compress": _run(
                StageName.COMPRESS, RunState.SUCCEEDED, result=_result(StageName.COMPRESS, {"model": "cm"})
            )
        },
    )
    served = reconcile(_observed(case), now=NOW)
    obs = _observed(case)
    unserved = reconcile(Observed(**{**obs.__dict__, "serving_allowed": False}), now=NOW)
    assert [r.stage for r in served.runs] == [StageName.SERVE]
    assert unserved.runs == [] and unserved.status.phase is Phase.SUCCEEDED
    assert unserved.status.run_id == served.status.run_id and unserved.status.artifacts == {"model": "cm"}
    ready = unserved.status.condition("Ready")
    assert ready is not None and ready.status.value == "True" and "--no-serve" in ready.message


def test_serving_publishes_under_its_own_prefix_so_the_compressed_model_result_stays() -> None:
    case = Case(
        "prefixes",
        RELEASE,
        inputs={"PretrainJob/p": _ready("PretrainJob", "p"), "EvalSuite/e": _ready("EvalSuite", "e", gate=True)},
    )
    (_, compress, compress_out), (_, serve, serve_out) = expected_runs(_observed(case))
    assert (compress, serve) == (StageName.COMPRESS, StageName.SERVE)
    assert serve_out == f"{compress_out}/serve" and compress_out.startswith("modelreleases/default/r/")


def test_an_unreadable_store_shows_on_the_resource_with_one_warning_event() -> None:
    """Store unreachable or its credentials missing: Ready=Unknown with the URI and the fix, a
    Warning Event on the first look only, nothing created or deleted, looked at again later."""
    obs = Observed(
        **{
            **_observed(_case("starts-pretrain-when-dataset-ready")).__dict__,
            "store_error": "cannot reach the S3 endpoint http://s3:8333 (connection refused)",
        }
    )
    first = reconcile(obs, now=NOW)
    ready = first.status.condition("Ready")
    assert ready is not None and ready.status.value == "Unknown" and ready.reason == "StoreUnavailable"
    assert STORE in ready.message and "connection refused" in ready.message and "store.s3.secretName" in ready.message
    assert first.runs == [] and first.delete == [] and first.requeue_after and first.requeue_after > 0
    assert [(e.type, e.reason) for e in first.events] == [("Warning", "StoreUnavailable")]
    again = reconcile(Observed(**{**obs.__dict__, "status": first.status}), now=NOW)
    assert again.events == []
