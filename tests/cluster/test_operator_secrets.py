"""What the operator says while a stage cannot start, on the real control plane: a missing Secret
holds the stage back with `WaitingForSecret` until it is created; a pod the scheduler cannot place,
an image that cannot be pulled and a Secret gone after the Job was made are relayed into the Ready
condition (kwok plays the kubelet's waiting reasons, see stages/pod-image-pull-backoff.yaml and
stages/pod-config-error.yaml). The operator runs with the chart's RBAC (it may `get` a
Secret by name, never list them)."""

from __future__ import annotations

import json
from typing import Any

from .controlplane import ControlPlane, eventually
from .operator_harness import Operator, condition, jobs, resource, running_operator, wait_job


def dataset(name: str, compute: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "lmforge.io/v1alpha1",
        "kind": "Dataset",
        "metadata": {"name": name},
        "spec": {"sources": [{"name": "s", "uri": "s3://b/x.jsonl", "license": "MIT"}], "compute": compute},
    }


def ready_with(
    cp: ControlPlane, op: Operator, ns: str, name: str, reasons: tuple[str, ...], text: str = ""
) -> dict[str, Any]:
    """The Ready condition of Dataset `name`, once its reason is one of `reasons` and its message has `text`."""

    def check() -> dict[str, Any] | None:
        cond = condition(resource(cp, ns, "datasets", name), "Ready")
        return cond if cond and cond["reason"] in reasons and text in cond["message"] else None

    return eventually(check, timeout=60, what=f"datasets/{name} Ready {reasons} with {text!r}", abort=op.dead)


def test_missing_s3_secret_waits_then_the_stage_starts(control_plane: ControlPlane, namespace: str) -> None:
    cp, ns = control_plane, namespace
    with running_operator(cp, ns) as op:
        cp.apply(dataset("needs-creds", {"s3CredentialsSecret": "ds-s3"}), namespace=ns)
        cond = ready_with(cp, op, ns, "needs-creds", ("WaitingForSecret",), "Secret ds-s3")
        assert cond["status"] == "False" and "spec.compute.s3CredentialsSecret" in cond["message"], cond
        assert resource(cp, ns, "datasets", "needs-creds")["status"]["phase"] == "Waiting"  # type: ignore[index]
        assert jobs(cp, ns, "lmforge.io/dataset=needs-creds") == []

        cp.apply(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "ds-s3"},
                "stringData": {"AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": "key"},
            },
            namespace=ns,
        )
        job = wait_job(cp, op, ns, "lmforge.io/dataset=needs-creds")
        container = job["spec"]["template"]["spec"]["containers"][0]
        assert container["envFrom"] == [{"secretRef": {"name": "ds-s3"}}]
        cond = ready_with(cp, op, ns, "needs-creds", ("Pending", "Running"))
        assert "Secret" not in cond["message"], cond

        # The grant behind this is `get` by name only: Secrets still cannot be listed.
        token = json.loads(op.kubeconfig.read_text())["users"][0]["user"]["token"]
        assert cp.request("GET", f"/api/v1/namespaces/{ns}/secrets/ds-s3", token=token)[0] == 200
        assert cp.request("GET", f"/api/v1/namespaces/{ns}/secrets", token=token)[0] == 403


def test_unschedulable_pod_is_relayed_into_the_condition(control_plane: ControlPlane, namespace: str) -> None:
    cp, ns = control_plane, namespace
    with running_operator(cp, ns) as op:
        cp.apply(dataset("nowhere", {"nodeSelector": {"lmforge.io/pool": "does-not-exist"}}), namespace=ns)
        wait_job(cp, op, ns, "lmforge.io/dataset=nowhere")
        cond = ready_with(cp, op, ns, "nowhere", ("Pending",), "Unschedulable")
        assert "node(s) didn't match" in cond["message"] and cond["message"].startswith("pod nowhere-dataset-"), cond


def test_stuck_containers_are_relayed_into_the_condition(control_plane: ControlPlane, namespace: str) -> None:
    cp, ns = control_plane, namespace
    with running_operator(cp, ns) as op:
        # The Secret exists when the operator checks it, so the Job is made; it is then deleted, as
        # kwok's config-error stage (a Secret named kwok-missing-*) reports to the Ready condition.
        cp.apply(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "kwok-missing-hf"},
                "stringData": {"token": "t"},
            },
            namespace=ns,
        )
        cp.apply(
            dataset("no-image", {"image": "lmforge/trainer:missing"}),
            dataset("revoked", {"secretEnv": {"HF_TOKEN": {"name": "kwok-missing-hf", "key": "token"}}}),
            namespace=ns,
        )
        wait_job(cp, op, ns, "lmforge.io/dataset=revoked")
        cp.kubectl("delete", "secret", "kwok-missing-hf", f"--namespace={ns}")
        wait_job(cp, op, ns, "lmforge.io/dataset=no-image")

        pull = ready_with(cp, op, ns, "no-image", ("Pending",), "ImagePullBackOff")
        assert pull["status"] == "False" and pull["message"].startswith("pod no-image-dataset-"), pull
        assert (
            'container trainer: ImagePullBackOff: Back-off pulling image "lmforge/trainer:missing"' in pull["message"]
        ), pull
        config = ready_with(cp, op, ns, "revoked", ("Pending",), "CreateContainerConfigError")
        assert config["status"] == "False", config
        assert (
            'container trainer: CreateContainerConfigError: secret "kwok-missing-hf" not found' in config["message"]
        ), config
        for name in ("no-image", "revoked"):  # the stages held the pods back: nothing ran
            assert resource(cp, ns, "datasets", name)["status"]["phase"] == "Pending"  # type: ignore[index]
            pods = cp.pods(ns, f"lmforge.io/dataset={name}")
            assert [p["status"]["phase"] for p in pods] == ["Pending"], pods
