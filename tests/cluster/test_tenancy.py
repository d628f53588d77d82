"""Tenancy on a real API server: the chart's ValidatingAdmissionPolicy rejects a resource naming an
image, ServiceAccount or Secret its lists do not allow (with a message naming the field) and admits
an allowed one; the chart's default RBAC gives the operator nothing outside its watched namespaces;
the operator never adopts an object it did not create."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from lmforge.api import KINDS
from lmforge.api.meta import Status
from lmforge.operator.reconcile import Observed
from lmforge.operator.reconcile.reconciler import expected_runs

from .controlplane import ControlPlane, eventually
from .operator_harness import condition, ensure_crds, jobs, resource, running_operator, wait_job

CHART = Path(__file__).resolve().parents[2] / "charts" / "lmforge"
DATASETS = "/apis/lmforge.io/v1alpha1/namespaces/{ns}/datasets"


def _render(cp: ControlPlane, namespace: str, *sets: str, show: tuple[str, ...]) -> list[dict[str, Any]]:
    flags = [f"--set={s}" for s in sets] + [f"--show-only=templates/{t}" for t in show]
    out = cp.helm("template", "lmf", str(CHART), f"--namespace={namespace}", "--kube-version=1.37.0", *flags).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def _dataset(name: str, **compute: Any) -> dict[str, Any]:
    return {
        "apiVersion": "lmforge.io/v1alpha1",
        "kind": "Dataset",
        "metadata": {"name": name},
        "spec": {"sources": [{"name": "s", "uri": "s3://b/x.txt", "license": "MIT"}], "compute": compute},
    }


@pytest.fixture
def policy(control_plane: ControlPlane, namespace: str) -> Iterator[list[dict[str, Any]]]:
    """The chart's policy and binding for `namespace`, applied; removed afterwards (cluster-scoped)."""
    ensure_crds(control_plane)
    docs = _render(
        control_plane,
        namespace,
        "policy.allowedImages={registry.local/lmforge/*}",
        "policy.allowedSecrets={hf-*}",
        "policy.allowedServiceAccounts={trainer}",
        show=("admissionpolicy.yaml",),
    )
    assert {d["kind"] for d in docs} == {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}
    control_plane.apply(*docs)
    try:
        # The admission plugin picks a new policy (and binding) up within seconds: wait until it rejects.
        eventually(
            lambda: (
                control_plane.request(
                    "POST", DATASETS.format(ns=namespace), _dataset(f"p-{uuid.uuid4().hex[:6]}", image="evil/x:1")
                )[0]
                == 403
            ),
            timeout=60,
            what="the admission policy to be active",
        )
        yield docs
    finally:
        for d in docs:
            control_plane.kubectl("delete", d["kind"].lower(), d["metadata"]["name"], "--ignore-not-found")


def test_admission_policy_rejects_a_forbidden_image_and_admits_an_allowed_one(
    control_plane: ControlPlane, namespace: str, policy: list[dict[str, Any]]
) -> None:
    cp = control_plane
    path = DATASETS.format(ns=namespace)

    status, body = cp.request("POST", path, _dataset("forbidden", image="docker.io/evil/miner:1"))
    assert status == 403 and body["code"] == 403 and body["reason"] == "Forbidden", body
    assert "spec.compute.image: image 'docker.io/evil/miner:1' is not allowed" in body["message"], body
    assert "policy.allowedImages" in body["message"]
    # kubectl shows the same message to a user.
    proc = cp.kubectl(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        check=False,
        input=yaml.safe_dump(_dataset("by-kubectl", image="docker.io/evil/miner:1")),
    )
    assert proc.returncode != 0 and "spec.compute.image" in proc.stderr and "not allowed" in proc.stderr

    for name, compute in (
        ("allowed-image", {"image": "registry.local/lmforge/trainer:2"}),
        ("default-image", {}),
        ("chart-trainer-image", {"image": "ghcr.io/lmforge/trainer:0.1.0"}),
        (
            "allowed-refs",
            {
                "serviceAccountName": "trainer",
                "s3CredentialsSecret": "lmforge-s3",
                "secretEnv": {"HF_TOKEN": {"name": "hf-token", "key": "t"}},
            },
        ),
    ):
        status, created = cp.request("POST", path, _dataset(name, **compute))
        assert status == 201, (name, created)

    for compute, field in (
        ({"serviceAccountName": "admin"}, "spec.compute.serviceAccountName"),
        ({"s3CredentialsSecret": "prod-db"}, "spec.compute.s3CredentialsSecret"),
        ({"secretEnv": {"X": {"name": "root-ca", "key": "k"}}}, "spec.compute.secretEnv"),
    ):
        status, body = cp.request("POST", path, _dataset(f"bad-{uuid.uuid4().hex[:6]}", **compute))
        assert status == 403 and body["message"].split("denied request: ", 1)[-1].startswith(field), body

    # An update that introduces a forbidden image is rejected too.
    status, body = cp.request(
        "PATCH",
        f"{path}/allowed-image",
        {"spec": {"compute": {"image": "evil/x:1"}}},
        content_type="application/merge-patch+json",
    )
    assert status == 403 and "spec.compute.image" in body["message"], body


def test_release_and_suite_api_key_secrets_are_checked(
    control_plane: ControlPlane, namespace: str, policy: list[dict[str, Any]]
) -> None:
    cp = control_plane
    release = {
        "apiVersion": "lmforge.io/v1alpha1",
        "kind": "ModelRelease",
        "metadata": {"name": "r"},
        "spec": {
            "modelRef": {"kind": "PretrainJob", "name": "p"},
            "serving": {"apiKeySecret": {"name": "someone-elses", "key": "k"}},
        },
    }
    path = f"/apis/lmforge.io/v1alpha1/namespaces/{namespace}/modelreleases"
    status, body = cp.request("POST", path, release)
    assert (
        status == 403 and "spec.serving.apiKeySecret.name: Secret 'someone-elses' is not allowed" in body["message"]
    ), body
    release["spec"]["serving"]["apiKeySecret"]["name"] = "hf-serving-key"
    status, body = cp.request("POST", path, release)
    assert status == 201, body
    suite = {
        "apiVersion": "lmforge.io/v1alpha1",
        "kind": "EvalSuite",
        "metadata": {"name": "e"},
        "spec": {
            "endpoint": {"url": "http://x:8000/v1", "apiKeySecret": {"name": "nope", "key": "k"}},
            "tasks": [{"name": "mc", "type": "multipleChoice", "dataUri": "x"}],
        },
    }
    status, body = cp.request("POST", f"/apis/lmforge.io/v1alpha1/namespaces/{namespace}/evalsuites", suite)
    assert status == 403 and "spec.endpoint.apiKeySecret.name" in body["message"], body


def test_the_policy_binds_only_the_watched_namespaces(
    control_plane: ControlPlane, namespace: str, policy: list[dict[str, Any]]
) -> None:
    cp = control_plane
    other = cp.create_namespace(f"t-{uuid.uuid4().hex[:8]}")
    try:
        status, body = cp.request("POST", DATASETS.format(ns=other), _dataset("d", image="evil/x:1"))
        assert status == 201, body  # another operator's (or nobody's) namespace: not this chart's business
    finally:
        cp.delete_namespace(other)


def test_default_rbac_cannot_read_secrets_in_another_namespace(control_plane: ControlPlane, namespace: str) -> None:
    cp = control_plane
    docs = _render(cp, namespace, show=("rbac.yaml", "serviceaccount.yaml"))  # chart defaults
    assert {d["kind"] for d in docs} == {"Role", "RoleBinding", "ServiceAccount"}
    cp.apply(*docs, namespace=namespace)
    sa = next(d for d in docs if d["kind"] == "ServiceAccount")["metadata"]["name"]
    who = f"--as=system:serviceaccount:{namespace}:{sa}"
    other = cp.create_namespace(f"t-{uuid.uuid4().hex[:8]}")
    try:

        def can(verb: str, what: str, ns: str) -> str:
            proc = cp.kubectl("auth", "can-i", verb, what, who, f"--namespace={ns}", check=False)
            return proc.stdout.strip()

        eventually(lambda: can("get", "secrets", namespace) == "yes", timeout=30, what="the Role to take effect")
        assert can("list", "secrets", namespace) == "no"  # by name only, even at home
        assert can("get", "secrets", other) == "no"
        assert can("create", "jobs.batch", other) == "no"
        assert can("get", "pretrainjobs.lmforge.io", other) == "no"
        assert can("create", "jobs.batch", namespace) == "yes"
        assert cp.kubectl("auth", "can-i", "list", "namespaces", who, check=False).stdout.strip() == "no"
    finally:
        cp.delete_namespace(other)


def test_an_object_of_a_run_s_name_that_is_not_ours_is_never_adopted(
    control_plane: ControlPlane, namespace: str
) -> None:
    """Server-side apply with force would take over a ConfigMap someone else made under the name a new
    run needs (and garbage-collect it with the resource); the operator refuses and says so instead."""
    cp, ns = control_plane, namespace
    manifest = {**_dataset("squatted"), "metadata": {"name": "squatted", "namespace": ns}}
    parsed = KINDS["Dataset"].model.model_validate(manifest)
    [(run, _, _)] = expected_runs(
        Observed(resource=parsed, kind="Dataset", name="squatted", generation=1, status=Status(), store="file:///x")
    )
    theirs = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"{run}-spec"}, "data": {"mine": "yes"}}
    cp.apply(theirs, namespace=ns)
    with running_operator(cp, ns) as op:
        cp.apply(_dataset("squatted"), namespace=ns)

        def conflict() -> dict[str, Any] | None:
            cond = condition(resource(cp, ns, "datasets", "squatted"), "Ready")
            return cond if cond and cond["reason"] == "NameConflict" else None

        cond = eventually(conflict, timeout=60, what="Ready reason NameConflict", abort=op.dead)
        assert f"ConfigMap {run}-spec" in cond["message"] and "does not adopt" in cond["message"], cond
        found = cp.kubectl_json("get", "configmap", f"{run}-spec", "-n", ns)
        assert found["data"] == {"mine": "yes"} and not found["metadata"].get("ownerReferences")
        assert jobs(cp, ns, "lmforge.io/dataset=squatted") == []
        # Once it is gone, the run starts (the operator looks again with backoff).
        cp.kubectl("delete", "configmap", f"{run}-spec", "-n", ns)
        job = wait_job(cp, op, ns, "lmforge.io/dataset=squatted", timeout=60)
        assert job["metadata"]["name"] == run
        mine = cp.kubectl_json("get", "configmap", f"{run}-spec", "-n", ns)
        assert mine["metadata"]["ownerReferences"][0]["kind"] == "Dataset"


def test_each_run_gets_its_network_policy_and_a_superseded_run_loses_it(
    control_plane: ControlPlane, namespace: str
) -> None:
    """The API server accepts the NetworkPolicies the operator builds (schema, its RBAC), they select
    the run's pods, and they go with their run. (This control plane has no CNI: nothing enforces them.)"""
    cp, ns = control_plane, namespace
    env = {"LMFORGE_NETWORK_POLICIES": "true", "LMFORGE_S3_ENDPOINT": "http://10.20.30.40:8333"}
    with running_operator(cp, ns, env=env) as op:
        cp.apply(_dataset("fenced"), namespace=ns)
        job = wait_job(cp, op, ns, "lmforge.io/dataset=fenced")
        run = job["metadata"]["name"]

        def policy() -> dict[str, Any] | None:
            proc = cp.kubectl("get", "networkpolicy", run, "-n", ns, "-o", "json", check=False)
            return yaml.safe_load(proc.stdout) if proc.returncode == 0 else None

        np = eventually(policy, timeout=30, what=f"NetworkPolicy {run}", abort=op.dead)
        assert np["metadata"]["ownerReferences"][0]["kind"] == "Dataset"
        assert np["spec"]["podSelector"]["matchLabels"] == {"lmforge.io/run": run}
        assert sorted(np["spec"]["policyTypes"]) == ["Egress", "Ingress"]
        store = [r for r in np["spec"]["egress"] if r.get("to") == [{"ipBlock": {"cidr": "10.20.30.40/32"}}]]
        assert store and store[0]["ports"][0]["port"] == 8333
        pods = eventually(lambda: cp.pods(ns, f"lmforge.io/run={run}"), timeout=30, what="the run's pods")
        assert pods, "the policy's selector matches the run's pods"
        # A new spec supersedes the run: its Job and its NetworkPolicy are deleted, the new run gets one.
        changed = _dataset("fenced")
        changed["spec"]["sources"][0]["uri"] = "s3://b/y.txt"
        cp.apply(changed, namespace=ns)
        new = eventually(
            lambda: [j for j in jobs(cp, ns, "lmforge.io/dataset=fenced") if j["metadata"]["name"] != run],
            timeout=60,
            what="the new run's Job",
            abort=op.dead,
        )
        eventually(lambda: policy() is None, timeout=60, what=f"NetworkPolicy {run} deleted", abort=op.dead)
        names = [n["metadata"]["name"] for n in cp.kubectl_json("get", "networkpolicies", "-n", ns)["items"]]
        assert names == [new[0]["metadata"]["name"]]


def test_the_operator_enforces_the_lists_without_the_admission_policy(
    control_plane: ControlPlane, namespace: str
) -> None:
    """A cluster without the policy (or a resource admitted before it): the operator's own check, from
    the same lists in its environment, refuses the resource and creates nothing of it."""
    cp, ns = control_plane, namespace
    env = {"LMFORGE_ALLOWED_IMAGES": '["registry.local/lmforge/*"]', "LMFORGE_ALLOWED_SECRETS": "[]"}
    with running_operator(cp, ns, env=env) as op:
        cp.apply(_dataset("smuggler", image="docker.io/evil/miner:1"), _dataset("honest"), namespace=ns)

        def refused() -> dict[str, Any] | None:
            cond = condition(resource(cp, ns, "datasets", "smuggler"), "Ready")
            return cond if cond and cond["reason"] == "InvalidSpec" else None

        cond = eventually(refused, timeout=60, what="Ready reason InvalidSpec", abort=op.dead)
        assert cond["status"] == "False" and cond["message"].startswith("spec.compute.image: image "), cond
        wait_job(cp, op, ns, "lmforge.io/dataset=honest")  # the allowed one runs...
        assert jobs(cp, ns, "lmforge.io/dataset=smuggler") == []  # ...the forbidden one never did
