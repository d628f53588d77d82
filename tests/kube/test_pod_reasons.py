"""Why a run's pods do not run, as named table cases: pods (as the API returns them) → the line the
Ready condition relays; and when a child is worth a pod LIST at all. No cluster."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from lmforge.operator.kube.observe import observe_child, pod_waiting_reason, pods_worth_a_look
from lmforge.operator.reconcile.types import ObservedRun, RunState

NOW = datetime(2026, 11, 29, 1, 0, tzinfo=UTC)


def _pod(
    name: str,
    phase: str = "Pending",
    conditions: list[dict[str, Any]] | None = None,
    waiting: dict[str, str] | None = None,
    init: bool = False,
) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase, "conditions": conditions or []}
    if waiting is not None:
        cs = [{"name": "trainer", "state": {"waiting": waiting}}]
        status["initContainerStatuses" if init else "containerStatuses"] = cs
    return {"metadata": {"name": name}, "status": status}


UNSCHEDULABLE = {
    "type": "PodScheduled",
    "status": "False",
    "reason": "Unschedulable",
    "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
}


@pytest.mark.parametrize(
    ("name", "pods", "want"),
    [
        ("no-pods", [], None),
        (
            "unschedulable-names-the-scheduler-message",
            [_pod("j-0", conditions=[UNSCHEDULABLE])],
            "pod j-0: Unschedulable: 0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
        ),
        (
            "missing-secret-in-pod",
            [_pod("j-0", waiting={"reason": "CreateContainerConfigError", "message": 'secret "own" not found'})],
            'pod j-0: container trainer: CreateContainerConfigError: secret "own" not found',
        ),
        (
            "image-pull-back-off",
            [_pod("j-0", waiting={"reason": "ImagePullBackOff", "message": "back-off pulling x"})],
            "pod j-0: container trainer: ImagePullBackOff: back-off pulling x",
        ),
        (
            "init-container-counts-too",
            [_pod("j-0", waiting={"reason": "ErrImagePull"}, init=True)],
            "pod j-0: container trainer: ErrImagePull",
        ),
        ("container-creating-is-normal", [_pod("j-0", waiting={"reason": "ContainerCreating"})], None),
        ("failed-pods-are-not-waiting", [_pod("j-0", phase="Failed", conditions=[UNSCHEDULABLE])], None),
        (
            "first-stuck-pod-by-name",
            [_pod("j-1", waiting={"reason": "ImagePullBackOff"}), _pod("j-0", conditions=[UNSCHEDULABLE])],
            "pod j-0: Unschedulable: 0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
        ),
    ],
)
def test_pod_waiting_reason(name: str, pods: list[dict[str, Any]], want: str | None) -> None:
    assert pod_waiting_reason(pods) == want


def _child(kind: str, age: float, status: dict[str, Any], suspend: bool = False) -> dict[str, Any]:
    created = (NOW - timedelta(seconds=age)).strftime("%Y-%m-%dT%H:%M:%SZ")
    spec: dict[str, Any] = {"suspend": suspend} if kind == "Job" else {"replicas": 1}
    return {
        "kind": kind,
        "metadata": {"name": "r-dataset-abcdef", "creationTimestamp": created},
        "spec": spec,
        "status": status,
    }


@pytest.mark.parametrize(
    ("name", "child", "want"),
    [
        ("young-job-costs-no-list", _child("Job", 1, {"active": 1}), False),
        ("old-pending-job-with-pods", _child("Job", 30, {"active": 1, "ready": 0}), True),
        ("job-without-pods-yet", _child("Job", 30, {}), False),
        ("suspended-job-waits-for-admission", _child("Job", 30, {"active": 0}, suspend=True), False),
        ("running-job", _child("Job", 30, {"active": 1, "ready": 1}), False),
        ("unavailable-deployment", _child("Deployment", 30, {"replicas": 1}), True),
    ],
)
def test_pods_worth_a_look(name: str, child: dict[str, Any], want: bool) -> None:
    run = observe_child(child, "http://r:8000/v1")
    assert isinstance(run, ObservedRun)
    assert pods_worth_a_look(child, run, NOW) is want


def test_finished_run_is_never_looked_at() -> None:
    child = _child("Job", 30, {"active": 1})
    done = ObservedRun("r", "r", RunState.SUCCEEDED)
    assert pods_worth_a_look(child, done, NOW) is False
