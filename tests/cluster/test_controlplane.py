"""The local control plane behaves like the real Kubernetes the operator will meet.

These tests pin down what the operator's tests rely on: the pinned version, GPU nodes that the
scheduler honours (capacity and taint), Job pods that run and finish when a test says so, the
Job controller's success/failure accounting, garbage collection through ownerReferences, and RBAC.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from .controlplane import (
    COMPLETE_ANNOTATION,
    GPU_RESOURCE,
    GPU_TAINT,
    GPU_TOLERATION,
    K8S_VERSION,
    ControlPlane,
    eventually,
    node_is_ready,
)


def gpu_job(
    name: str,
    *,
    gpus: int = 1,
    tolerate: bool = True,
    backoff_limit: int = 0,
    pods: int = 1,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A Job shaped like a training launcher: GPU limit, GPU toleration, never restarts."""
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [
            {
                "name": "train",
                "image": "lmforge/trainer:test",
                "resources": {"limits": {GPU_RESOURCE: str(gpus)}},
            }
        ],
    }
    if tolerate:
        pod_spec["tolerations"] = [dict(GPU_TOLERATION)]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": backoff_limit,
            "parallelism": pods,
            "completions": pods,
            "template": {"metadata": {"annotations": annotations or {}}, "spec": pod_spec},
        },
    }


def job_pod(cp: ControlPlane, namespace: str, job: str, phase: str) -> dict[str, Any]:
    """Wait for the Job's (single) pod to reach ``phase`` and return it."""

    def check() -> dict[str, Any] | None:
        pods = cp.pods(namespace, f"batch.kubernetes.io/job-name={job}")
        return next((p for p in pods if p.get("status", {}).get("phase") == phase), None)

    return eventually(check, timeout=60, what=f"a {phase} pod of job {namespace}/{job}")


def job_condition(cp: ControlPlane, namespace: str, job: str, cond_type: str) -> dict[str, Any]:
    """Wait for the Job condition ``cond_type`` to be True and return the Job."""

    def check() -> dict[str, Any] | None:
        _, body = cp.request("GET", f"/apis/batch/v1/namespaces/{namespace}/jobs/{job}")
        conditions = body.get("status", {}).get("conditions", []) if isinstance(body, dict) else []
        done = any(c["type"] == cond_type and c["status"] == "True" for c in conditions)
        return body if done else None

    return eventually(check, timeout=60, what=f"job {namespace}/{job} condition {cond_type}")


def test_version_is_pinned(control_plane: ControlPlane) -> None:
    status, body = control_plane.request("GET", "/version")
    assert status == 200
    assert body["gitVersion"] == K8S_VERSION
    assert (body["major"], body["minor"]) == ("1", K8S_VERSION.split(".")[1])
    server = control_plane.kubectl_json("version")["serverVersion"]
    assert server["gitVersion"] == K8S_VERSION


def test_gpu_nodes_ready_with_8_gpus(control_plane: ControlPlane) -> None:
    nodes = {n["metadata"]["name"]: n for n in control_plane.kubectl_json("get", "nodes")["items"]}
    assert set(control_plane.gpu_node_names()) <= set(nodes)
    assert len(control_plane.gpu_node_names()) == 4
    for name in control_plane.gpu_node_names():
        node = nodes[name]
        assert node_is_ready(node), node["status"].get("conditions")
        assert node["status"]["allocatable"][GPU_RESOURCE] == "8"
        assert node["status"]["capacity"][GPU_RESOURCE] == "8"
        assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == "H100-SXM"
        assert "node.kubernetes.io/instance-type" in node["metadata"]["labels"]
        taints = node["spec"].get("taints", [])
        assert any(t["key"] == GPU_TAINT["key"] and t["effect"] == "NoSchedule" for t in taints), taints
        # The node-lifecycle controller would add not-ready taints if heartbeats stopped.
        assert not any(t["key"].startswith("node.kubernetes.io/") for t in taints), taints


def test_gpu_job_runs_then_succeeds_on_demand(control_plane: ControlPlane, namespace: str) -> None:
    cp = control_plane
    cp.apply(gpu_job("ok"), namespace=namespace)
    pod = job_pod(cp, namespace, "ok", "Running")
    assert pod["spec"]["nodeName"] in cp.gpu_node_names()
    # Nothing completes it until the test asks: it is still Running a moment later.
    _, job = cp.request("GET", f"/apis/batch/v1/namespaces/{namespace}/jobs/ok")
    assert job["status"].get("active") == 1
    cp.complete_pod(namespace, pod["metadata"]["name"], "succeeded")
    job = job_condition(cp, namespace, "ok", "Complete")
    assert job["status"]["succeeded"] == 1
    done = cp.pods(namespace, "batch.kubernetes.io/job-name=ok")[0]
    assert done["status"]["phase"] == "Succeeded"
    assert done["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 0


def test_gpu_job_fails_on_demand(control_plane: ControlPlane, namespace: str) -> None:
    cp = control_plane
    cp.apply(gpu_job("bad", backoff_limit=0), namespace=namespace)
    pod = job_pod(cp, namespace, "bad", "Running")
    cp.complete_pod(namespace, pod["metadata"]["name"], "failed", exit_code=3)
    job = job_condition(cp, namespace, "bad", "Failed")
    assert job["status"]["failed"] == 1
    failed = next(c for c in job["status"]["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "BackoffLimitExceeded"
    dead = cp.pods(namespace, "batch.kubernetes.io/job-name=bad")[0]
    assert dead["status"]["phase"] == "Failed"
    assert dead["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 3


def test_pod_template_annotation_completes_pods_by_itself(control_plane: ControlPlane, namespace: str) -> None:
    """Two whole-node (8-GPU) workers land on two different nodes and finish after kwok-delay."""
    cp = control_plane
    annotations = {COMPLETE_ANNOTATION: "succeeded", "lmforge.io/kwok-delay": "2s"}
    cp.apply(gpu_job("auto", gpus=8, pods=2, annotations=annotations), namespace=namespace)
    job = job_condition(cp, namespace, "auto", "Complete")
    assert job["status"]["succeeded"] == 2
    pods = cp.pods(namespace, "batch.kubernetes.io/job-name=auto")
    assert len({p["spec"]["nodeName"] for p in pods}) == 2  # 8 GPUs each: one node per pod
    for pod in pods:
        started = datetime.fromisoformat(pod["status"]["startTime"])
        finished = datetime.fromisoformat(pod["status"]["containerStatuses"][0]["state"]["terminated"]["finishedAt"])
        assert (finished - started).total_seconds() >= 1  # the 2 s delay, at 1 s resolution


def test_scheduler_honours_gpu_taint_and_capacity(control_plane: ControlPlane, namespace: str) -> None:
    cp = control_plane
    cp.apply(gpu_job("untolerated", tolerate=False), gpu_job("too-big", gpus=9), namespace=namespace)

    def unschedulable(job: str) -> str | None:
        for pod in cp.pods(namespace, f"batch.kubernetes.io/job-name={job}"):
            for cond in pod.get("status", {}).get("conditions", []):
                if cond["type"] == "PodScheduled" and cond.get("reason") == "Unschedulable":
                    return str(cond.get("message", ""))
        return None

    message = eventually(lambda: unschedulable("untolerated"), timeout=60, what="taint to repel the pod")
    assert "4 node(s) had untolerated taint" in message, message
    message = eventually(lambda: unschedulable("too-big"), timeout=60, what="9 GPUs to be unschedulable")
    assert f"Insufficient {GPU_RESOURCE}" in message, message


def test_deleting_job_garbage_collects_its_pods(control_plane: ControlPlane, namespace: str) -> None:
    cp = control_plane
    cp.apply(gpu_job("gc"), namespace=namespace)
    pod = job_pod(cp, namespace, "gc", "Running")
    _, job = cp.request("GET", f"/apis/batch/v1/namespaces/{namespace}/jobs/gc")
    owners = pod["metadata"]["ownerReferences"]
    assert [(o["kind"], o["uid"]) for o in owners] == [("Job", job["metadata"]["uid"])]
    cp.kubectl("delete", "job", "gc", f"--namespace={namespace}", "--cascade=background", "--wait=false")
    eventually(
        lambda: cp.pods(namespace, "batch.kubernetes.io/job-name=gc") == [] or None,
        timeout=90,
        what="the garbage collector to delete the Job's pods",
    )


def test_rbac_denies_service_account_without_permissions(control_plane: ControlPlane, namespace: str) -> None:
    cp = control_plane
    sa = f"nobody-{uuid.uuid4().hex[:6]}"
    status, _ = cp.request(
        "POST",
        f"/api/v1/namespaces/{namespace}/serviceaccounts",
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa}},
    )
    assert status == 201
    status, body = cp.request(
        "POST",
        f"/api/v1/namespaces/{namespace}/serviceaccounts/{sa}/token",
        {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": 600},
        },
    )
    assert status == 201, body
    token = body["status"]["token"]

    # Authenticated (the token is valid) ...
    status, review = cp.request(
        "POST",
        "/apis/authentication.k8s.io/v1/selfsubjectreviews",
        {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
        token=token,
    )
    assert status == 201, review
    assert review["status"]["userInfo"]["username"] == f"system:serviceaccount:{namespace}:{sa}"
    # ... but not authorised.
    status, body = cp.request("GET", f"/api/v1/namespaces/{namespace}/pods", token=token)
    assert status == 403, body
    assert cp.request("GET", f"/api/v1/namespaces/{namespace}/pods")[0] == 200  # admin may

    # Granting a Role makes the same request succeed: the 403 came from RBAC, not from elsewhere.
    cp.apply(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "pod-reader"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": sa},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
            "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": namespace}],
        },
        namespace=namespace,
    )
    eventually(
        lambda: cp.request("GET", f"/api/v1/namespaces/{namespace}/pods", token=token)[0] == 200,
        timeout=30,
        what="the RoleBinding to take effect",
    )


def test_helm_talks_to_the_cluster(control_plane: ControlPlane) -> None:
    version = control_plane.helm("version", "--short").stdout
    assert version.startswith("v3."), version
    listed = control_plane.helm("list", "--all-namespaces", "--output", "json").stdout
    assert listed.strip() == "[]"
