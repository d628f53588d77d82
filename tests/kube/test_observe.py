"""The observer as named table cases: child objects (as the API returns them) → ObservedRun."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from lmforge.api.contract import ProgressRecord, RecordType, StageName
from lmforge.operator.kube.meta import owner_of
from lmforge.operator.kube.observe import observe_child, pod_failure_reason, with_store
from lmforge.operator.reconcile.types import RunState

NAME = "base-1b-pretrain-0a1b2c"


def _job(status: dict[str, Any], suspend: bool = False) -> dict[str, Any]:
    return {
        "kind": "Job",
        "metadata": {"name": NAME, "labels": {"lmforge.io/run": NAME}},
        "spec": {"suspend": suspend},
        "status": status,
    }


def _cond(type_: str, reason: str = "", message: str = "") -> dict[str, Any]:
    return {"type": type_, "status": "True", "reason": reason, "message": message}


@dataclass
class Case:
    name: str
    child: dict[str, Any]
    state: RunState
    attempts: int = 1
    message_has: str = ""
    retryable: bool = True


CASES = [
    Case("new-job-without-pods-is-pending", _job({}), RunState.PENDING, message_has="not created"),
    Case("active-not-ready-is-pending", _job({"active": 4, "ready": 0}), RunState.PENDING),
    Case("ready-pods-is-running", _job({"active": 4, "ready": 4}), RunState.RUNNING),
    Case("suspended-by-kueue-waits-for-admission", _job({}, suspend=True), RunState.PENDING, message_has="admission"),
    Case(
        "failed-pod-being-retried-counts-attempts",
        _job({"active": 1, "ready": 1, "failed": 2}),
        RunState.RUNNING,
        attempts=3,
        message_has="retrying after 2",
    ),
    Case("complete-job-succeeded", _job({"succeeded": 1, "conditions": [_cond("Complete")]}), RunState.SUCCEEDED),
    Case(
        "backoff-exhausted-is-failed-and-explains",
        _job(
            {
                "failed": 4,
                "conditions": [_cond("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")],
            }
        ),
        RunState.FAILED,
        attempts=4,
        message_has="BackoffLimitExceeded: Job has reached",
    ),
    Case(
        "exit-code-2-is-failed-not-retryable",
        _job(
            {
                "failed": 1,
                "conditions": [
                    _cond("Failed", "PodFailurePolicy", "Container trainer ... exit code 2 matching FailJob rule")
                ],
            }
        ),
        RunState.FAILED,
        message_has="PodFailurePolicy",
        retryable=False,
    ),
    Case(
        "deployment-rolling-out",
        {
            "kind": "Deployment",
            "metadata": {"name": NAME, "generation": 1},
            "spec": {"replicas": 2},
            "status": {"availableReplicas": 1, "updatedReplicas": 2, "observedGeneration": 1},
        },
        RunState.RUNNING,
        message_has="1/2 replicas",
    ),
    Case(
        "deployment-available-is-ready",
        {
            "kind": "Deployment",
            "metadata": {"name": NAME, "generation": 1},
            "spec": {"replicas": 2},
            "status": {"availableReplicas": 2, "updatedReplicas": 2, "observedGeneration": 1},
        },
        RunState.READY,
    ),
    Case(
        "deployment-deadline-exceeded-is-failed",
        {
            "kind": "Deployment",
            "metadata": {"name": NAME},
            "spec": {"replicas": 1},
            "status": {
                "conditions": [
                    {
                        "type": "Progressing",
                        "status": "False",
                        "reason": "ProgressDeadlineExceeded",
                        "message": "timed out",
                    }
                ]
            },
        },
        RunState.FAILED,
        message_has="timed out",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_observe_child(case: Case) -> None:
    run = observe_child(case.child, endpoint="http://x/v1")
    assert run is not None
    assert run.state is case.state
    assert run.name == NAME
    assert run.attempts == case.attempts
    assert run.retryable is case.retryable
    if case.message_has:
        assert run.message is not None and case.message_has in run.message, run.message
    if case.state is RunState.READY:
        assert run.endpoint == "http://x/v1"


def test_other_children_are_not_runs() -> None:
    assert observe_child({"kind": "ConfigMap", "metadata": {"name": "x"}}) is None


RESULT = ProgressRecord(type=RecordType.RESULT, stage=StageName.PRETRAIN, run_id="r", artifacts={"model": "m"})
PROGRESS = ProgressRecord(stage=StageName.PRETRAIN, run_id="r", step=5, total=10)


def test_store_result_without_child_is_success() -> None:
    run = with_store(None, NAME, StageName.PRETRAIN, RESULT, None)
    assert run is not None and run.state is RunState.SUCCEEDED and run.result == RESULT
    assert with_store(None, NAME, StageName.PRETRAIN, None, PROGRESS) is None


def test_complete_job_without_result_breaks_the_contract() -> None:
    job = observe_child(_job({"succeeded": 1, "conditions": [_cond("Complete")]}))
    run = with_store(job, NAME, StageName.PRETRAIN, None, None)
    assert run is not None and run.state is RunState.FAILED and "result.json" in (run.message or "")
    run = with_store(job, NAME, StageName.PRETRAIN, RESULT, PROGRESS)
    assert run is not None and run.state is RunState.SUCCEEDED and run.progress == PROGRESS


def test_pod_failure_reason_prefers_the_stage_error_line() -> None:
    def pod(ts: str, message: str, code: int) -> dict[str, Any]:
        return {
            "metadata": {"creationTimestamp": ts},
            "status": {
                "phase": "Failed",
                "containerStatuses": [{"state": {"terminated": {"exitCode": code, "message": message}}}],
            },
        }

    pods = [
        pod("2026-01-01T00:00:00Z", "lmforge: error: old", 1),
        pod("2026-01-01T00:01:00Z", "log line\nlmforge: error: CUDA out of memory\n", 1),
    ]
    assert pod_failure_reason(pods) == "CUDA out of memory"
    assert pod_failure_reason([pod("t", "", 2)]) == "container exited with code 2 (invalid input: not retried)"
    assert pod_failure_reason([]) is None


def test_owner_from_labels() -> None:
    assert owner_of({"lmforge.io/run": "x", "lmforge.io/pretrainjob": "base"}) == ("pretrainjob", "base")
    assert owner_of({"app": "x"}) is None


def test_an_oom_killed_pod_says_so_with_its_memory_limit() -> None:
    pod = {
        "metadata": {"creationTimestamp": "t"},
        "spec": {"containers": [{"name": "trainer", "resources": {"limits": {"memory": "160Mi"}}}]},
        "status": {
            "phase": "Failed",
            "containerStatuses": [
                {
                    "name": "trainer",
                    "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled", "message": "some log line"}},
                }
            ],
        },
    }
    reason = pod_failure_reason([pod])
    assert reason is not None and reason.startswith("OOMKilled") and "160Mi" in reason
    assert "spec.compute.resources.limits.memory" in reason
    unlimited = {**pod, "spec": {"containers": [{"name": "trainer"}]}}
    assert "no limit set" in (pod_failure_reason([unlimited]) or "")
