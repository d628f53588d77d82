"""Serving children of a ModelRelease: one Deployment per serve run and one stable Service.

Zero-downtime roll-out: each run (spec or model change) gets its own Deployment; the Service is
named after the release and selects every serving pod of the release, old and new. The reconciler
keeps the old run until the new one is Ready (Deployment available) and only then deletes it, so the
Service always has Ready endpoints.

Model download: the serve stage itself fetches the model from the store before it starts vLLM (one
code path for the embedded runner and the cluster, and it already holds the credentials). The
startup probe allows for that download; readiness and liveness then use vLLM's `/health`.
"""

from __future__ import annotations

from typing import Any

from lmforge.api.contract import StageName, stage_command
from lmforge.operator.kube.meta import RUN_LABEL, Owner, labels, metadata, stamp
from lmforge.operator.kube.pods import SPEC_PATH, container, pod_spec
from lmforge.operator.reconcile.types import StageRun
from lmforge.operator.settings import Settings

STARTUP_SECONDS = 1800
"""Longest time a replica may take to download the model and load it before it is restarted."""


def endpoint(owner: Owner, port: int) -> str:
    """The in-cluster OpenAI-compatible URL of a release."""
    return f"http://{owner.name}.{owner.namespace}.svc:{port}/v1"


def deployment(run: StageRun, owner: Owner, settings: Settings) -> dict[str, Any]:
    """The vLLM Deployment of one serve run."""
    port = run.port or 8000
    main = container(run, settings, stage_command(StageName.SERVE, SPEC_PATH), [])
    main["ports"] = [{"name": "http", "containerPort": port}]
    probe = {"httpGet": {"path": "/health", "port": "http"}}
    main["startupProbe"] = {**probe, "periodSeconds": 10, "failureThreshold": STARTUP_SECONDS // 10}
    main["readinessProbe"] = {**probe, "periodSeconds": 5, "failureThreshold": 3}
    main["livenessProbe"] = {**probe, "periodSeconds": 15, "failureThreshold": 4}
    meta = metadata(owner, run.name, run.name, "serve")
    selector = {owner.kind_label: owner.name, RUN_LABEL: run.name}
    return stamp({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
        "spec": {
            "replicas": run.replicas,
            "selector": {"matchLabels": selector},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {"metadata": {"labels": dict(meta["labels"])},
                         "spec": pod_spec(run, settings, main, "Always")},
        },
    })


def release_service(run: StageRun, owner: Owner) -> dict[str, Any]:
    """The release's stable Service (no run label: it outlives every run)."""
    port = run.port or 8000
    meta = metadata(owner, owner.name, None, "serve")
    meta["labels"] = labels(owner, None, "serve")
    return stamp({
        "apiVersion": "v1", "kind": "Service", "metadata": meta,
        "spec": {"selector": {owner.kind_label: owner.name, "app.kubernetes.io/component": "serve"},
                 "ports": [{"name": "http", "port": port, "targetPort": "http"}]},
    })
