"""The stage container and pod template shared by Jobs and Deployments."""

from __future__ import annotations

import functools
import json
from typing import Any

import yaml

from lmforge.api.scheduling import Compute, GangScheduler
from lmforge.operator.reconcile.types import StageRun
from lmforge.operator.settings import Settings

CONTAINER = "trainer"
"""Name of the stage container (the pod failure policy's exit-code rule names it)."""
SPEC_DIR = "/etc/lmforge"
SPEC_FILE = "spec.yaml"
SPEC_PATH = f"{SPEC_DIR}/{SPEC_FILE}"
GPU = "nvidia.com/gpu"


def config_map_name(run: StageRun) -> str:
    """The ConfigMap holding the run's `--spec` file."""
    return f"{run.name}-spec"


_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
"""libyaml's emitter when PyYAML has it: the same text as the pure-Python one at ~1/10 of the CPU
(that emitter was ~80 % of a reconcile's CPU, and the operator shares the cores with the API server)."""


def spec_yaml(run: StageRun) -> str:
    """The StageSpec as the stage reads it (worker index comes from JOB_COMPLETION_INDEX)."""
    return _yaml_of(json.dumps(run.spec.wire(), sort_keys=True))


@functools.lru_cache(maxsize=256)
def _yaml_of(spec_json: str) -> str:
    """YAML of a spec, memoised on its JSON (C-encoded, ~20x cheaper than emitting YAML): every
    routine reconcile of a running resource rebuilds its children to compare their hashes."""
    return yaml.dump(json.loads(spec_json), Dumper=_DUMPER, sort_keys=True, allow_unicode=False)


def _quantities(values: dict[str, Any]) -> dict[str, str]:
    return {k.replace("ephemeral_storage", "ephemeral-storage"): str(v) for k, v in values.items() if v is not None}


def resources(compute: Compute, gpus: int, defaults: dict[str, dict[str, str]] | None = None) -> dict[str, Any]:
    """Requests/limits: CPU and memory from the spec, else the operator's defaults (chart
    `trainer.defaultResources`); GPUs set equal in both (the device plugin only honours limits, and
    requests must not differ from limits for extended resources)."""
    defaults = defaults or {}
    requests = _quantities(compute.resources.requests.model_dump()) or dict(defaults.get("requests", {}))
    limits = _quantities(compute.resources.limits.model_dump()) or dict(defaults.get("limits", {}))
    if gpus:
        requests[GPU] = limits[GPU] = str(gpus)
    out: dict[str, Any] = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def env(run: StageRun, settings: Settings) -> list[dict[str, Any]]:
    """Environment of the stage container: settings' extras, the spec's, and Secret references."""
    items: dict[str, dict[str, Any]] = {}
    if settings.s3_endpoint:
        items["AWS_ENDPOINT_URL"] = {"name": "AWS_ENDPOINT_URL", "value": settings.s3_endpoint}
    if settings.tracking_uri:
        items["MLFLOW_TRACKING_URI"] = {"name": "MLFLOW_TRACKING_URI", "value": settings.tracking_uri}
    for name, value in {**settings.extra_env, **run.compute.env}.items():
        items[name] = {"name": name, "value": value}
    for name, ref in {**run.compute.secret_env, **run.secret_env}.items():
        items[name] = {"name": name, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}
    items["LMFORGE_RUN"] = {"name": "LMFORGE_RUN", "value": run.name}
    return [items[k] for k in sorted(items)]


def s3_secret(run: StageRun, settings: Settings) -> str | None:
    """Secret with the store credentials: the resource's own, else the operator's."""
    return run.compute.s3_credentials_secret or settings.s3_secret


def container(run: StageRun, settings: Settings, command: list[str], extra_env: list[dict[str, Any]]) -> dict[str, Any]:
    """The stage container. `FallbackToLogsOnError` makes the `lmforge: error:` line (the last
    stderr line) the termination message, which the observer relays into the condition."""
    c: dict[str, Any] = {
        "name": CONTAINER,
        "image": run.compute.image or settings.trainer_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": command,
        "env": extra_env + env(run, settings),
        "resources": resources(run.compute, run.gpus_per_node, settings.default_resources),
        "volumeMounts": [
            {"name": "spec", "mountPath": SPEC_DIR, "readOnly": True},
            {"name": "dshm", "mountPath": "/dev/shm"},
            {"name": "scratch", "mountPath": "/tmp"},
        ],
        "terminationMessagePolicy": "FallbackToLogsOnError",
        # Writable only where the pod's emptyDirs are (/tmp, /dev/shm): the stages keep HOME, caches
        # and downloads under /tmp.
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
        },
    }
    port = metrics_port(run, settings)
    if port:
        # The stage's exporter on the pod IP (rank 0 binds it); the chart's PodMonitor scrapes the
        # container port named `metrics`.
        c["env"] += [
            {"name": "LMFORGE_METRICS_PORT", "value": str(port)},
            {"name": "LMFORGE_METRICS_ADDR", "value": "0.0.0.0"},
        ]
        c["ports"] = [{"name": "metrics", "containerPort": port}]
    secret = s3_secret(run, settings)
    if secret:
        c["envFrom"] = [{"secretRef": {"name": secret}}]
    return c


def metrics_port(run: StageRun, settings: Settings) -> int | None:
    """The stage exporter's port: the resource's own, else the operator's default; none for serving
    (vLLM serves its own /metrics on the API port)."""
    if run.long_running or not settings.stage_metrics_port:
        return None
    return run.metrics_port or settings.stage_metrics_port


def seccomp_profile(run: StageRun) -> str:
    """RuntimeDefault, except for a pod that runs model-written code: its bubblewrap sandbox needs
    user namespaces, which the runtime's default profile forbids. That pod keeps every other bound
    (non-root, no capabilities, no privilege escalation, no API token, read-only root), and the
    programs themselves run under the sandbox's own seccomp filter (trainer/evaluate/seccomp.py:
    no nested user namespaces, mounts, keyrings, bpf, ptrace...)."""
    return "Unconfined" if run.user_namespaces else "RuntimeDefault"


def pod_spec(run: StageRun, settings: Settings, main: dict[str, Any], restart: str) -> dict[str, Any]:
    """Pod spec: placement from `spec.compute`, the spec ConfigMap, a memory-backed /dev/shm."""
    compute = run.compute
    tolerations = list(settings.default_tolerations) + [
        t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in compute.tolerations
    ]
    spec: dict[str, Any] = {
        "restartPolicy": restart,
        "containers": [main],
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": settings.run_as_user,
            "runAsGroup": settings.run_as_user,
            "fsGroup": settings.run_as_user,
            "seccompProfile": {"type": seccomp_profile(run)},
        },
        # Stage pods never call the API server: no token to steal (also not from model-written code).
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": compute.termination_grace_seconds,
        "volumes": [
            {"name": "spec", "configMap": {"name": config_map_name(run)}},
            # NCCL and data-loader workers share tensors through /dev/shm; the default 64Mi is too small.
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": compute.shm_size}},
            {"name": "scratch", "emptyDir": {"sizeLimit": compute.scratch_size}},
        ],
    }
    if tolerations:
        spec["tolerations"] = tolerations
    if compute.node_selector:
        spec["nodeSelector"] = dict(compute.node_selector)
    if compute.affinity is not None:
        spec["affinity"] = compute.affinity.model_dump(mode="json")
    if compute.service_account_name:
        spec["serviceAccountName"] = compute.service_account_name
    if compute.scheduling.priority_class_name:
        spec["priorityClassName"] = compute.scheduling.priority_class_name
    if compute.scheduling.gang is GangScheduler.VOLCANO:
        spec["schedulerName"] = "volcano"
    return spec
