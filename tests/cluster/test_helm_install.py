"""`helm install` of the chart works against a real API server as users run it, and `helm uninstall`
removes what it installed."""

from __future__ import annotations

from pathlib import Path

from .controlplane import ControlPlane, eventually

CHART = Path(__file__).resolve().parents[2] / "charts" / "lmforge"


def test_helm_install_and_uninstall(control_plane: ControlPlane, namespace: str) -> None:
    release = "lmf"
    control_plane.helm(
        "install",
        release,
        str(CHART),
        f"--namespace={namespace}",
        "--set=rbac.namespaced=true",
        f"--set=watchNamespaces={{{namespace}}}",
    )
    listed = control_plane.helm("list", f"--namespace={namespace}", "-o", "json").stdout
    assert f'"name":"{release}"' in listed and '"status":"deployed"' in listed
    deployments = control_plane.kubectl_json("get", "deployments", "-n", namespace)["items"]
    [operator] = [d for d in deployments if d["metadata"]["labels"].get("app.kubernetes.io/instance") == release]
    pod = operator["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert control_plane.kubectl_json(
        "get", "serviceaccounts", "-n", namespace, "-l", f"app.kubernetes.io/instance={release}"
    )["items"]
    # The CRDs came with the chart (or were already there) and are served.
    assert control_plane.kubectl_json("get", "crd", "datasets.lmforge.io")["metadata"]["name"]

    control_plane.helm("uninstall", release, f"--namespace={namespace}", "--wait")

    def gone() -> bool:
        items = control_plane.kubectl_json(
            "get",
            "deployments,serviceaccounts,roles,rolebindings",
            "-n",
            namespace,
            "-l",
            f"app.kubernetes.io/instance={release}",
        )["items"]
        return not items

    eventually(gone, timeout=60, what="helm uninstall removed the release's objects")
