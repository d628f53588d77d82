"""Runs the real operator (`python -m lmforge.operator`) as a subprocess against the test control
plane, with the chart's own RBAC as its identity: the chart's Role/RoleBinding/ServiceAccount are
rendered with `helm template` for the test namespace, applied, and a token of that ServiceAccount
goes into the operator's kubeconfig. So anything the chart forgot to grant fails here too."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from lmforge.api.contract import RESULT_KEY, ProgressRecord, RecordType, StageName
from lmforge.store import open_store

from .controlplane import GPU_TOLERATION, ControlPlane, eventually

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "lmforge"
GROUP_PATH = "/apis/lmforge.io/v1alpha1"
_crds_applied: set[str] = set()


def ensure_crds(cp: ControlPlane) -> None:
    """Apply crds/ once per control plane and wait until every CRD is Established."""
    if cp.server in _crds_applied:
        return
    cp.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    cp.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
    _crds_applied.add(cp.server)


def operator_identity(cp: ControlPlane, namespace: str, workdir: Path) -> Path:
    """Apply the chart's namespaced RBAC for `namespace` and return a kubeconfig for its SA."""
    rendered = cp.helm(
        "template",
        "lmf",
        str(CHART),
        f"--namespace={namespace}",
        "--kube-version=1.37.0",
        "--set=rbac.namespaced=true",
        f"--set=watchNamespaces={{{namespace}}}",
        "--set=leaderElection.enabled=true",
        "--show-only=templates/leader-election.yaml",
        "--show-only=templates/rbac.yaml",
        "--show-only=templates/serviceaccount.yaml",
    ).stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    cp.apply(*docs, namespace=namespace)
    sa = next(d for d in docs if d["kind"] == "ServiceAccount")["metadata"]["name"]
    status, body = cp.request(
        "POST",
        f"/api/v1/namespaces/{namespace}/serviceaccounts/{sa}/token",
        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 3600}},
    )
    assert status == 201, body
    config = json.loads(cp.kubeconfig.read_text())
    config["users"] = [{"name": sa, "user": {"token": body["status"]["token"]}}]
    config["contexts"][0]["context"]["user"] = sa
    path = workdir / "operator.kubeconfig"
    path.write_text(json.dumps(config))
    return path


class Operator:
    """The operator subprocess; `restart()` kills and starts it again (same identity, same store)."""

    def __init__(
        self, cp: ControlPlane, namespace: str, store: str, workdir: Path, env: dict[str, str] | None = None
    ) -> None:
        self.cp, self.namespace, self.store, self.workdir = cp, namespace, store, workdir
        self.kubeconfig = operator_identity(cp, namespace, workdir)
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "operator.log"

    def start(self) -> None:
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "LMFORGE_STORE": self.store,
            "LMFORGE_METRICS_PORT": "0",
            "LMFORGE_TRAINER_IMAGE": "lmforge/trainer:test",
            "LMFORGE_DEFAULT_TOLERATIONS": json.dumps([GPU_TOLERATION]),
            "LMFORGE_POLL_SECONDS": "2",
            **self.env,
        }
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "lmforge.operator", f"--namespace={self.namespace}", "--liveness="],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def dead(self) -> str | None:
        if self.proc is not None and self.proc.poll() is not None:
            return f"operator exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}"
        return None

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@contextmanager
def running_operator(
    cp: ControlPlane, namespace: str, store: str | None = None, env: dict[str, str] | None = None
) -> Iterator[Operator]:
    ensure_crds(cp)
    with tempfile.TemporaryDirectory(prefix="lmforge-op-") as tmp:
        op = Operator(cp, namespace, store or f"file://{tmp}/store", Path(tmp), env)
        op.start()
        try:
            yield op
        finally:
            op.stop()


def get(cp: ControlPlane, path: str) -> Any:
    status, body = cp.request("GET", path)
    return body if status == 200 else None


def resource(cp: ControlPlane, ns: str, plural: str, name: str) -> dict[str, Any] | None:
    return get(cp, f"{GROUP_PATH}/namespaces/{ns}/{plural}/{name}")


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any] | None:
    for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
        if cond["type"] == type_:
            return dict(cond)
    return None


def jobs(cp: ControlPlane, ns: str, selector: str) -> list[dict[str, Any]]:
    return list(cp.kubectl_json("get", "jobs", f"--namespace={ns}", f"--selector={selector}")["items"])


def wait_job(cp: ControlPlane, op: Operator, ns: str, selector: str, timeout: float = 60) -> dict[str, Any]:
    """The single Job matching `selector`, once it exists."""
    found = eventually(lambda: jobs(cp, ns, selector), timeout=timeout, what=f"a Job with {selector}", abort=op.dead)
    assert len(found) == 1, [j["metadata"]["name"] for j in found]
    return found[0]


def stage_output(cp: ControlPlane, ns: str, job: dict[str, Any]) -> str:
    """The run's output prefix, from the spec ConfigMap the operator made for it."""
    cm = get(cp, f"/api/v1/namespaces/{ns}/configmaps/{job['metadata']['name']}-spec")
    return str(yaml.safe_load(cm["data"]["spec.yaml"])["output"])


def publish_result(
    store: str, prefix: str, stage: StageName, artifacts: dict[str, str], metrics: dict[str, float] | None = None
) -> None:
    """Do what a stage does last: write `result.json` (the contract's completion marker)."""
    record = ProgressRecord(
        type=RecordType.RESULT,
        stage=stage,
        run_id=prefix.rsplit("/", 1)[-1],
        artifacts=artifacts,
        metrics=metrics or {},
    )
    open_store(store).put_bytes(f"{prefix}/{RESULT_KEY}", record.model_dump_json(by_alias=True).encode())


def finish_job(
    cp: ControlPlane, op: Operator, ns: str, job: dict[str, Any], outcome: str = "succeeded", exit_code: int = 1
) -> None:
    """Wait for the Job's pods to run, then have kwok finish them all."""
    name = job["metadata"]["name"]
    want = int(job["spec"].get("parallelism") or 1)

    def running() -> list[dict[str, Any]] | None:
        pods = [
            p
            for p in cp.pods(ns, f"batch.kubernetes.io/job-name={name}")
            if p.get("status", {}).get("phase") == "Running"
        ]
        return pods if len(pods) >= want else None

    for pod in eventually(running, timeout=60, what=f"{want} running pods of {name}", abort=op.dead):
        cp.complete_pod(ns, pod["metadata"]["name"], outcome, exit_code)
