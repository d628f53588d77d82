"""Serving children of a ModelRelease: one Deployment and one Service per serve run, and one stable
Service (plus, with `serving.gateway`, an HTTPRoute: traffic.py).

Zero-downtime roll-out: each run (spec or model change) gets its own Deployment; the Service is
named after the release and selects every serving pod of the release, old and new. The reconciler
keeps the old run until the new one is Ready (Deployment available) and only then deletes it, so the
Service always has Ready endpoints. The per-run Service addresses one version alone (a smoke suite,
a canary's HTTPRoute backend); how a canary's share is set is in traffic.py. LoRA adapters are not part of a run: a changed adapter set rolls
the same Deployment's pods (`template_metadata`), each new pod fetching the new set in its init
container — the operator does not load adapters into running pods (see docs/release.md).

Model download, the way KServe does it: an init container (the trainer image, which has LMForge's
store client) pulls the model and any LoRA adapters into an emptyDir, hash-verified and resumable,
and writes vLLM's options there (`lmforge.trainer.serve.prepare`); the server container then runs
vLLM's own image (`serving.image` in the chart: vLLM's official OpenAI-server image on GPU
clusters, the CPU build from the Dockerfile's `serve` target elsewhere) on `0.0.0.0`, with the API
key from the release's Secret as `VLLM_API_KEY`. The startup probe allows for loading; readiness and
liveness then use vLLM's `/health`. `progressDeadlineSeconds` exceeds the whole start-up budget, so
a slow start is never reported as a failed roll-out.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

from lmforge.api.contract import VLLM_API_SERVER, VLLM_CONFIG_FILE, VLLM_SITE_DIR
from lmforge.api.release import ModelRelease
from lmforge.operator.kube.meta import RUN_LABEL, Owner, labels, metadata, stamp
from lmforge.operator.kube.pods import CONTAINER, SPEC_PATH, container, pod_spec
from lmforge.operator.kube.traffic import FULL_REPLICAS
from lmforge.operator.reconcile import adapters
from lmforge.operator.reconcile.runs import SERVING_API_KEY_ENV
from lmforge.operator.reconcile.types import StageRun
from lmforge.operator.settings import Settings

STARTUP_SECONDS = 1800
"""Longest time a replica may take to load the model after its init container before it is restarted."""
DOWNLOAD_SECONDS = 3600
"""Budget for the init container's download, counted into the Deployment's progress deadline."""
DRAIN_SECONDS = 10
"""How long a replica being replaced keeps serving after it leaves the Service's endpoints."""
MODEL_DIR = "/models"
SERVER_CONTAINER = "vllm"
VLLM_CONFIG = f"{MODEL_DIR}/{VLLM_CONFIG_FILE}"
"""Written by the init container (`lmforge.trainer.serve.prepare`)."""
ADAPTERS_ANNOTATION = "lmforge.io/lora-adapters"
"""Pod template annotation: a digest of the LoRA adapters (name → artifact) the pods serve."""


def endpoint(owner: Owner, port: int) -> str:
    """The in-cluster OpenAI-compatible URL of a release."""
    return f"http://{owner.name}.{owner.namespace}.svc:{port}/v1"


def _server(run: StageRun, settings: Settings, port: int, stage: dict[str, Any]) -> dict[str, Any]:
    """vLLM's container: its own image, the options the init container wrote, host 0.0.0.0."""
    serving = ModelRelease.model_validate(run.spec.resource).spec.serving
    env: list[dict[str, Any]] = [
        {"name": "HOME", "value": "/tmp"},
        {"name": "HF_HUB_OFFLINE", "value": "1"},
        {"name": "VLLM_NO_USAGE_STATS", "value": "1"},
    ]
    if run.gpus_per_node == 0:
        env.append({"name": "VLLM_CPU_KVCACHE_SPACE", "value": str(max(1, math.ceil(serving.kv_cache_gib)))})
        env.append({"name": "PYTHONPATH", "value": f"{MODEL_DIR}/{VLLM_SITE_DIR}"})  # AMX permission
    key = run.secret_env.get(SERVING_API_KEY_ENV)
    if key is not None:
        env.append({"name": "VLLM_API_KEY", "valueFrom": {"secretKeyRef": {"name": key.name, "key": key.key}}})
    probe = {"httpGet": {"path": "/health", "port": "http"}}
    return {
        "name": SERVER_CONTAINER,
        "image": settings.serving_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": [
            "python3",
            "-m",
            VLLM_API_SERVER,
            "--config",
            VLLM_CONFIG,
            "--host",
            "0.0.0.0",
            "--port",
            str(port),
            *serving.extra_args,
        ],
        "env": env,
        "ports": [{"name": "http", "containerPort": port}],
        "resources": stage["resources"],
        "startupProbe": {**probe, "periodSeconds": 10, "failureThreshold": STARTUP_SECONDS // 10},
        "readinessProbe": {**probe, "periodSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {**probe, "periodSeconds": 15, "failureThreshold": 4},
        # A replica being replaced keeps answering while its endpoint leaves every kube-proxy (and
        # load balancer): no request is sent to a server that already stopped listening.
        "lifecycle": {"preStop": {"sleep": {"seconds": DRAIN_SECONDS}}},
        "volumeMounts": [
            {"name": "models", "mountPath": MODEL_DIR, "readOnly": True},
            *(m for m in stage["volumeMounts"] if m["name"] not in ("spec", "models")),
        ],
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": stage["securityContext"],
    }


def deployment(run: StageRun, owner: Owner, settings: Settings, replicas: int | None = None) -> dict[str, Any]:
    """The vLLM Deployment of one serve run; `replicas` (default `run.replicas`): its share of a
    canary by replica ratio (traffic.py). The annotation keeps the full count."""
    port = run.port or 8000
    fetch = container(
        run, settings, ["python", "-m", "lmforge.trainer.serve.prepare", "--spec", SPEC_PATH, "--dest", MODEL_DIR], []
    )
    fetch["volumeMounts"].append({"name": "models", "mountPath": MODEL_DIR})
    # The download needs the store's credentials, not the API key the server is given.
    fetch["env"] = [e for e in fetch["env"] if e["name"] != SERVING_API_KEY_ENV]
    server = _server(run, settings, port, fetch)
    fetch["name"] = f"{CONTAINER}-model"
    fetch.pop("resources", None)  # a download needs no GPU; requests of an init container add up
    spec = pod_spec(run, settings, server, "Always")
    spec["initContainers"] = [fetch]
    spec["terminationGracePeriodSeconds"] = DRAIN_SECONDS + 30  # drain, then vLLM's own shutdown
    spec["volumes"].append({"name": "models", "emptyDir": {}})
    meta = metadata(owner, run.name, run.name, "serve")
    meta["annotations"][FULL_REPLICAS] = str(run.replicas)
    selector = {owner.kind_label: owner.name, RUN_LABEL: run.name}
    return stamp(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": meta,
            "spec": {
                "replicas": run.replicas if replicas is None else replicas,
                "selector": {"matchLabels": selector},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
                "progressDeadlineSeconds": DOWNLOAD_SECONDS + STARTUP_SECONDS + 600,
                "template": {"metadata": template_metadata(run, meta["labels"]), "spec": spec},
            },
        }
    )


def template_metadata(run: StageRun, run_labels: dict[str, str]) -> dict[str, Any]:
    """The pod template's labels, and the adapter set its init container fetches: a changed set
    (`serving.loraAdapters`, or an adapter's AlignmentJob published anew) changes the template, so the
    same Deployment rolls its pods (one extra at a time, none unavailable) onto the new set, while the
    release keeps its run, its model and its Service."""
    out: dict[str, Any] = {"labels": dict(run_labels)}
    want = adapters.of_spec(run.spec)
    if want:
        digest = hashlib.sha256(json.dumps(sorted(want.items())).encode()).hexdigest()[:16]
        out["annotations"] = {ADAPTERS_ANNOTATION: digest}
    return out


def release_service(run: StageRun, owner: Owner, only: str | None = None) -> dict[str, Any]:
    """The release's stable Service (no run label: it outlives every run). It selects every serving
    pod of the release, or only run `only`'s while that version alone may take traffic
    (traffic.service_pin: a new version being smoke-tested gets none)."""
    port = run.port or 8000
    meta = metadata(owner, owner.name, None, "serve")
    meta["labels"] = labels(owner, None, "serve")
    selector = {owner.kind_label: owner.name, "app.kubernetes.io/component": "serve"}
    if only is not None:
        selector[RUN_LABEL] = only
    return stamp(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": meta,
            "spec": {
                "selector": selector,
                "ports": [{"name": "http", "port": port, "targetPort": "http"}],
            },
        }
    )
