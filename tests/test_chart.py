"""The Helm chart: lint-clean, renders in both RBAC modes (namespaced by default), least privilege,
its admission policy carries the allow-lists, and ships exactly the
repository's CRDs (`lmforge crds` writes both copies)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "charts" / "lmforge"
K8S_VERSION = os.environ.get("K8S_VERSION", "v1.37.2")


def helm_binary() -> str:
    """The helm that tests/cluster/build.sh builds (found as tests/cluster/controlplane.py does)."""
    cache = Path(os.environ.get("LMFORGE_CACHE", Path.home() / ".cache" / "lmforge"))
    path = cache / f"k8s-{K8S_VERSION}" / "bin" / "helm"
    if not path.exists():
        subprocess.run(["bash", str(REPO / "tests/cluster/build.sh")], check=True, capture_output=True, timeout=3600)
    return str(path)


def helm(*args: str) -> str:
    env = {
        **os.environ,
        "HELM_CACHE_HOME": "/tmp/lmforge-helm/cache",
        "HELM_CONFIG_HOME": "/tmp/lmforge-helm/config",
        "HELM_DATA_HOME": "/tmp/lmforge-helm/data",
    }
    proc = subprocess.run([helm_binary(), *args], capture_output=True, text=True, timeout=120, env=env, check=False)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    return proc.stdout


def render(*sets: str) -> list[dict[str, Any]]:
    flags = [f"--set={s}" for s in sets]
    out = helm("template", "lmf", str(CHART), "--namespace=lmforge-system", "--kube-version=1.37.0", *flags)
    return [d for d in yaml.safe_load_all(out) if d]


def test_chart_crds_are_exact_copies() -> None:
    repo = {p.name: p.read_bytes() for p in (REPO / "crds").glob("*.yaml")}
    chart = {p.name: p.read_bytes() for p in (CHART / "crds").glob("*.yaml")}
    assert repo and chart == repo, "charts/lmforge/crds differs from crds/: run `lmforge crds`"


def test_lint_is_clean() -> None:
    out = helm("lint", "--strict", str(CHART), "--kube-version=1.37.0")
    assert "0 chart(s) failed" in out


def test_default_render_is_namespaced_and_hardened() -> None:
    docs = render()
    kinds = [d["kind"] for d in docs]
    assert "ClusterRole" not in kinds and "ClusterRoleBinding" not in kinds
    [role] = [d for d in docs if d["kind"] == "Role"]
    assert role["metadata"]["namespace"] == "lmforge-system"  # the release's own namespace only
    assert not {"ServiceMonitor", "PodMonitor", "PrometheusRule"} & set(kinds)
    dep = next(d for d in docs if d["kind"] == "Deployment")
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate"
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["resources"]["requests"]["memory"]
    assert "--namespace=lmforge-system" in c["args"] and "--all-namespaces" not in c["args"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["LMFORGE_STORE"].startswith("s3://") and env["LMFORGE_S3_SECRET"] == "lmforge-s3"


def test_cluster_wide_rbac_is_opt_in() -> None:
    for sets in (["rbac.clusterWide=true"], ["rbac.namespaced=false"]):  # the old spelling still works
        docs = render(*sets)
        kinds = [d["kind"] for d in docs]
        assert kinds.count("ClusterRole") == 1 and "Role" not in kinds, sets
        dep = next(d for d in docs if d["kind"] == "Deployment")
        assert "--all-namespaces" in dep["spec"]["template"]["spec"]["containers"][0]["args"]
        binding = next(d for d in docs if d["kind"] == "ValidatingAdmissionPolicyBinding")
        assert "matchResources" not in binding["spec"]  # every namespace, like the operator


def test_rbac_is_least_privilege() -> None:
    role = next(d for d in render("rbac.clusterWide=true") if d["kind"] == "ClusterRole")
    grants = {
        (g, r): set(rule["verbs"]) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
    }
    assert grants[("lmforge.io", "pretrainjobs")] == {"get", "list", "watch"}
    assert grants[("lmforge.io", "pretrainjobs/status")] == {"patch"}
    assert grants[("", "pods")] == {"list"}
    assert grants[("", "secrets")] == {"get"}  # by name only: listing Secrets stays forbidden
    assert ("", "nodes") not in grants
    assert all("*" not in verbs for verbs in grants.values())
    cleanup = next(d for d in render("store.cleanupOnDelete=true") if d["kind"] == "Role")
    assert "patch" in next(r["verbs"] for r in cleanup["rules"] if "datasets" in r["resources"])


def test_namespaced_mode_and_monitoring_toggles() -> None:
    docs = render(
        "rbac.namespaced=true",
        "watchNamespaces={ml,research}",
        "metrics.serviceMonitor.enabled=true",
        "metrics.podMonitor.enabled=true",
        "metrics.prometheusRule.enabled=true",
        "grafanaDashboard.enabled=true",
    )
    roles = [d for d in docs if d["kind"] == "Role"]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["ml", "research"]
    assert "ClusterRole" not in [d["kind"] for d in docs]
    dep = next(d for d in docs if d["kind"] == "Deployment")
    assert {"--namespace=ml", "--namespace=research"} <= set(dep["spec"]["template"]["spec"]["containers"][0]["args"])
    monitors = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "PodMonitor"}
    serving = next(m for name, m in monitors.items() if name.endswith("-serving"))
    assert serving["selector"]["matchLabels"]["lmforge.io/component"] == "serve"
    assert serving["podTargetLabels"] == ["lmforge.io/run"]  # the canary analysis queries by run
    assert serving["podMetricsEndpoints"][0]["port"] == "http"
    assert serving["namespaceSelector"] == {"matchNames": ["ml", "research"]}
    rule = next(d for d in docs if d["kind"] == "PrometheusRule")
    alerts = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert {"LMForgeJobFailed", "LMForgeProgressStalled", "LMForgeReleaseNotReady"} <= alerts
    dash = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("dashboard"))
    panels = yaml.safe_load(dash["data"]["lmforge.json"])["panels"]
    assert any("lmforge_training_loss" in p["targets"][0]["expr"] for p in panels)


def test_values_schema_rejects_a_typo() -> None:
    proc = subprocess.run(
        [helm_binary(), "template", "x", str(CHART), "--kube-version=1.37.0", "--set=workerz=3"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode != 0 and "workerz" in proc.stderr


def test_policy_lists_reach_the_admission_policy_and_the_operator() -> None:
    docs = render(
        "policy.allowedImages={registry.local/*,exact/img:1}",
        "policy.allowedSecrets={hf-token}",
        "watchNamespaces={ml,research}",
    )
    vap = next(d for d in docs if d["kind"] == "ValidatingAdmissionPolicy")
    variables = {v["name"]: yaml.safe_load(v["expression"]) for v in vap["spec"]["variables"]}
    assert variables["imagePrefixes"] == ["registry.local/"]
    assert variables["imageExact"] == ["ghcr.io/lmforge/trainer:0.1.0", "exact/img:1"]  # trainer.image always
    assert variables["secretExact"] == ["lmforge-s3", "hf-token"] and variables["accountExact"] == []
    rules = vap["spec"]["matchConstraints"]["resourceRules"][0]
    assert set(rules["resources"]) == {"datasets", "pretrainjobs", "alignmentjobs", "evalsuites", "modelreleases"}
    binding = next(d for d in docs if d["kind"] == "ValidatingAdmissionPolicyBinding")
    assert binding["spec"]["policyName"] == vap["metadata"]["name"]
    assert binding["spec"]["validationActions"] == ["Deny"]
    assert binding["spec"]["matchResources"]["namespaceSelector"]["matchExpressions"][0]["values"] == ["ml", "research"]
    dep = next(d for d in docs if d["kind"] == "Deployment")
    env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["LMFORGE_ALLOWED_IMAGES"] == '["registry.local/*","exact/img:1"]'
    assert env["LMFORGE_ALLOWED_SECRETS"] == '["hf-token"]' and env["LMFORGE_ALLOWED_SERVICE_ACCOUNTS"] == "[]"
    off = render("policy.enabled=false")
    assert not {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"} & {d["kind"] for d in off}
    dep = next(d for d in off if d["kind"] == "Deployment")
    assert not [
        e for e in dep["spec"]["template"]["spec"]["containers"][0]["env"] if e["name"].startswith("LMFORGE_ALLOWED_")
    ]


def test_tracking_uri_reaches_the_operator_only_when_set() -> None:
    def env(*sets: str) -> dict[str, str]:
        dep = next(d for d in render(*sets) if d["kind"] == "Deployment")
        return {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}

    assert env("tracking.uri=http://mlflow.mlflow:5000")["LMFORGE_TRACKING_URI"] == "http://mlflow.mlflow:5000"
    assert "LMFORGE_TRACKING_URI" not in env()


def test_the_prometheus_url_reaches_the_operator_only_when_set_and_it_may_apply_httproutes() -> None:
    def env(*sets: str) -> dict[str, str]:
        dep = next(d for d in render(*sets) if d["kind"] == "Deployment")
        return {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}

    assert env("operator.prometheusUrl=http://prom:9090")["LMFORGE_PROMETHEUS_URL"] == "http://prom:9090"
    assert "LMFORGE_PROMETHEUS_URL" not in env()
    role = next(d for d in render() if d["kind"] == "Role")
    rule = next(r for r in role["rules"] if r["apiGroups"] == ["gateway.networking.k8s.io"])
    assert rule["resources"] == ["httproutes"] and {"create", "patch", "delete"} <= set(rule["verbs"])


def test_several_replicas_elect_a_leader_on_a_lease_only_they_may_write() -> None:
    single = render()
    dep = next(d for d in single if d["kind"] == "Deployment")
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate"
    assert not any(d["kind"] == "Role" and d["metadata"]["name"].endswith("-leader") for d in single)
    docs = render("replicaCount=2")
    dep = next(d for d in docs if d["kind"] == "Deployment")
    assert dep["spec"]["replicas"] == 2 and dep["spec"]["strategy"]["type"] == "RollingUpdate"
    env = {e["name"]: e for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["LMFORGE_LEADER_ELECTION"]["value"] == "1"
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    role = next(d for d in docs if d["kind"] == "Role" and d["metadata"]["name"].endswith("-leader"))
    assert role["metadata"]["namespace"] == "lmforge-system"
    named = [r for r in role["rules"] if r.get("resourceNames")]
    assert named == [
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": ["lmforge-operator"],
            "verbs": ["get", "update"],
        }
    ]


def test_network_policies_are_on_by_default_with_the_rights_they_need() -> None:
    def grants_and_env(*sets: str) -> tuple[set[str], dict[str, str]]:
        docs = render(*sets)
        role = next(d for d in docs if d["kind"] == "Role")
        verbs = {v for rule in role["rules"] if "networkpolicies" in rule["resources"] for v in rule["verbs"]}
        dep = next(d for d in docs if d["kind"] == "Deployment")
        env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
        return verbs, env

    verbs, env = grants_and_env("networkPolicy.storeTo[0].ipBlock.cidr=10.0.5.0/24")
    assert verbs == {"get", "create", "patch", "delete"} and env["LMFORGE_NETWORK_POLICIES"] == "true"
    assert env["LMFORGE_NETWORK_STORE_PEERS"] == '[{"ipBlock":{"cidr":"10.0.5.0/24"}}]'
    verbs, env = grants_and_env("networkPolicy.enabled=false")
    assert verbs == set() and env["LMFORGE_NETWORK_POLICIES"] == "false"
