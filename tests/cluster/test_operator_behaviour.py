"""Operator behaviour on the control plane beyond the happy path: retries and their explanation,
invalid input without a retry storm, specs the models reject, RBAC limits, many resources at once,
and the S3 store."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest
from support.waiting import consistently

from lmforge.api.contract import StageName

from .controlplane import ControlPlane, eventually
from .operator_harness import (
    condition,
    finish_job,
    jobs,
    publish_result,
    resource,
    running_operator,
    stage_output,
    wait_job,
)


def dataset(name: str, backoff: int = 3, workers: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "lmforge.io/v1alpha1",
        "kind": "Dataset",
        "metadata": {"name": name},
        "spec": {
            "sources": [{"name": "s", "uri": "s3://b/x.jsonl", "license": "MIT"}],
            "workers": workers,
            "compute": {"backoffLimit": backoff},
        },
    }


def _reason(cp: ControlPlane, ns: str, plural: str, name: str, reason: str, op: Any) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        cond = condition(resource(cp, ns, plural, name), "Ready")
        return cond if cond and cond["reason"] == reason else None

    return eventually(check, timeout=60, what=f"{plural}/{name} Ready reason {reason}", abort=op.dead)


def test_failed_pod_is_retried_then_the_condition_explains(control_plane: ControlPlane, namespace: str) -> None:
    cp, ns = control_plane, namespace
    with running_operator(cp, ns) as op:
        cp.apply(dataset("flaky", backoff=1), dataset("invalid-input"), namespace=ns)
        job = wait_job(cp, op, ns, "lmforge.io/dataset=flaky")
        finish_job(cp, op, ns, job, "failed", exit_code=1)
        # The Job controller starts a second pod (the retry resumes from checkpoints); we say so.
        cond = _reason(cp, ns, "datasets", "flaky", "Running", op)
        assert "attempt 2" in cond["message"] or "retrying" in cond["message"], cond
        finish_job(cp, op, ns, job, "failed", exit_code=1)
        cond = _reason(cp, ns, "datasets", "flaky", "StageFailed", op)
        assert "BackoffLimitExceeded" in cond["message"] and "exited with code 1" in cond["message"], cond
        assert resource(cp, ns, "datasets", "flaky")["status"]["phase"] == "Failed"  # type: ignore[index]

        # Exit code 2 (invalid input): the pod failure policy fails the Job at once, no retry.
        job = wait_job(cp, op, ns, "lmforge.io/dataset=invalid-input")
        finish_job(cp, op, ns, job, "failed", exit_code=2)
        cond = _reason(cp, ns, "datasets", "invalid-input", "StageFailed", op)
        assert "PodFailurePolicy" in cond["message"], cond
        # ...and, not retried, it still relays what the pod said (here: its exit code).
        assert "exited with code 2 (invalid input" in cond["message"], cond
        pods = cp.pods(ns, f"batch.kubernetes.io/job-name={job['metadata']['name']}")
        assert len(pods) == 1, "exit code 2 must not be retried"


def test_spec_the_models_reject_is_invalid_spec_without_retry_storm(
    control_plane: ControlPlane, namespace: str
) -> None:
    cp, ns = control_plane, namespace
    with running_operator(cp, ns) as op:
        # A cross-field rule with a CEL twin is refused by the API server itself, naming the field.
        too_parallel = {
            "apiVersion": "lmforge.io/v1alpha1",
            "kind": "ModelRelease",
            "metadata": {"name": "too-parallel"},
            "spec": {"modelRef": {"uri": "s3://b/m"}, "gpus": 1, "serving": {"tensorParallelSize": 4}},
        }
        with pytest.raises(subprocess.CalledProcessError) as refused:
            cp.apply(too_parallel, namespace=ns)
        assert "spec.serving.tensorParallelSize" in str(refused.value.stderr), refused.value.stderr
        # One CEL cannot express (thresholds are parsed text) gets through; the model's check does not.
        bad = {
            "apiVersion": "lmforge.io/v1alpha1",
            "kind": "EvalSuite",
            "metadata": {"name": "no-such-task"},
            "spec": {
                "modelRef": {"uri": "s3://b/m"},
                "tasks": [{"name": "ppl", "type": "perplexity"}],
                "thresholds": ["nope.perplexity <= 10"],
            },
        }
        cp.apply(bad, namespace=ns)
        cond = _reason(cp, ns, "evalsuites", "no-such-task", "InvalidSpec", op)
        assert cond["status"] == "False" and "thresholds[0]" in cond["message"], cond

        def version() -> str:
            return str(resource(cp, ns, "evalsuites", "no-such-task")["metadata"]["resourceVersion"])  # type: ignore[index]

        before = version()
        # A retry storm would rewrite the status within seconds; watch the whole window, fail on the first write.
        consistently(
            lambda: version() == before, duration=3, interval=0.2, what="the InvalidSpec status staying unwritten"
        )
        assert jobs(cp, ns, "lmforge.io/evalsuite") == []


def test_operator_identity_is_limited_to_its_role(control_plane: ControlPlane, namespace: str) -> None:
    cp, ns = control_plane, namespace
    with running_operator(cp, ns) as op:
        token = json.loads(op.kubeconfig.read_text())["users"][0]["user"]["token"]
        assert cp.request("GET", f"/api/v1/namespaces/{ns}/pods", token=token)[0] == 200  # granted: list pods
        assert cp.request("GET", f"/api/v1/namespaces/{ns}/secrets", token=token)[0] == 403
        assert cp.request("GET", "/api/v1/nodes", token=token)[0] == 403
        assert cp.request("GET", "/apis/batch/v1/namespaces/default/jobs", token=token)[0] == 403
        status, _ = cp.request("DELETE", f"/api/v1/namespaces/{ns}/pods/x", token=token)
        assert status == 403


@pytest.mark.slow
def test_many_resources_at_once_all_reconcile(control_plane: ControlPlane, namespace: str) -> None:
    cp, ns = control_plane, namespace
    n = 60
    with running_operator(cp, ns) as op:
        cp.apply(*[dataset(f"d{i:03d}") for i in range(n)], namespace=ns)
        eventually(
            lambda: len(jobs(cp, ns, "lmforge.io/dataset")) == n or None, timeout=120, what=f"{n} Jobs", abort=op.dead
        )

        def all_pending() -> bool:
            items = cp.kubectl_json("get", "datasets", f"--namespace={ns}")["items"]
            return len(items) == n and all(
                (i.get("status") or {}).get("phase") in ("Pending", "Running") for i in items
            )

        eventually(all_pending, timeout=120, what="every Dataset with a status", abort=op.dead)


def test_s3_store_result_moves_the_resource_on(
    control_plane: ControlPlane, namespace: str, s3_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    cp, ns = control_plane, namespace
    s3_server.apply_env(monkeypatch)  # the test writes result.json with the operator's credentials
    store = f"s3://{s3_server.bucket}/operator-{ns}"
    with running_operator(cp, ns, store=store, env=s3_server.env()) as op:
        cp.apply(dataset("on-s3"), namespace=ns)
        job = wait_job(cp, op, ns, "lmforge.io/dataset=on-s3")
        publish_result(store, stage_output(cp, ns, job), StageName.DATASET, {"shards": f"{store}/x"})
        finish_job(cp, op, ns, job)
        _reason(cp, ns, "datasets", "on-s3", "Completed", op)
        assert resource(cp, ns, "datasets", "on-s3")["status"]["artifacts"] == {"shards": f"{store}/x"}  # type: ignore[index]
