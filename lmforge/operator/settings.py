"""Operator settings, read once from the environment (the chart sets these variables).

Why the environment and not a config file: a Deployment's `env` is what Helm values map to most
directly, and every value here is a scalar or a short JSON list.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lmforge.operator.reconcile.policy import Allowlists

DEFAULT_TRAINER_IMAGE = "ghcr.io/lmforge/trainer:0.1.0"
DEFAULT_SERVING_IMAGE = "docker.io/vllm/vllm-openai:v0.32.0"
"""vLLM's official OpenAI-server image (GPU). CPU clusters use the Dockerfile's `serve` target."""


def _bool(value: str | None, default: bool = False) -> bool:
    if value is None or value == "":
        return default
    return value.strip().lower() in ("1", "true", "yes", "on")


def _patterns(value: str | None) -> tuple[str, ...] | None:
    """An allow-list from a JSON list of strings; unset or empty string: no list (anything goes).
    `[]` is a list that allows nothing."""
    if value is None or value.strip() == "":
        return None
    items = json.loads(value)
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise ValueError(f"an allow-list must be a JSON list of strings, not {value!r}")
    return tuple(items)


@dataclass(frozen=True)
class Settings:
    """What the operator needs to know that is not in any resource."""

    store: str = "file:///var/lib/lmforge/store"
    """Root URI of the artifact store (`s3://bucket/prefix` in a cluster; `file://` for tests)."""
    trainer_image: str = DEFAULT_TRAINER_IMAGE
    """Image of the stage pods, unless a resource's `compute.image` overrides it."""
    serving_image: str = DEFAULT_SERVING_IMAGE
    """Image of the vLLM server container of serving pods (their init container uses the trainer's)."""
    stage_metrics_port: int = 9400
    """Port of a stage pod's Prometheus exporter, on the pod IP, when the resource names none
    (a PretrainJob's `spec.metrics.port` wins); 0 switches the stage exporters off."""
    image_pull_policy: str = "IfNotPresent"
    """Pull policy of the stage containers."""
    s3_secret: str | None = None
    """Secret (in the resource's namespace) with AWS_* credentials, mounted with `envFrom`."""
    s3_endpoint: str | None = None
    """`AWS_ENDPOINT_URL` given to the stage pods and used by the operator (MinIO, SeaweedFS...)."""
    namespaces: tuple[str, ...] = ()
    """Namespaces to watch; empty means all namespaces (cluster mode)."""
    metrics_port: int = 8080
    """Prometheus metrics port; 0 disables the endpoint."""
    metrics_addr: str = "0.0.0.0"
    """Address the /metrics endpoint binds (a pod's own IP space; tests use 127.0.0.1)."""
    workers: int = 8
    """Reconciles running at once (each mostly waits on the API server and the store)."""
    master_port: int = 29500
    """torch.distributed rendezvous port of multi-node jobs."""
    default_tolerations: tuple[dict[str, Any], ...] = ()
    """Tolerations added to every stage pod (e.g. the GPU taint of the cluster's GPU pools)."""
    store_cleanup: bool = False
    """Delete a resource's store prefix when the resource is deleted (adds a finalizer)."""
    run_as_user: int = 1000
    """UID of the stage containers (the Dockerfile's non-root user)."""
    poll_seconds: float = 10.0
    """Longest wait between two looks at a running resource (progress relay)."""
    default_resources: dict[str, dict[str, str]] = field(default_factory=dict)
    """Requests/limits of stage containers whose spec sets none (`{"requests": {...}, "limits": {...}}`)."""
    tracking_uri: str | None = None
    """MLflow tracking server given to the stage pods as `MLFLOW_TRACKING_URI` (the chart's `tracking.uri`);
    a resource's `spec.tracking` picks the experiment or opts out."""
    extra_env: Mapping[str, str] = field(default_factory=dict)
    """Environment added to every stage container (e.g. HF_HUB_OFFLINE)."""
    allowed_images: tuple[str, ...] | None = None
    """`spec.compute.image` values a resource may use (`prefix*` or exact; the chart's
    `policy.allowedImages`); None: any."""
    allowed_service_accounts: tuple[str, ...] | None = None
    """`spec.compute.serviceAccountName` values a resource may use; None: any."""
    allowed_secrets: tuple[str, ...] | None = None
    """Names of the Secrets a resource may refer to; None: any."""
    network_policies: bool = False
    """Give every stage run a NetworkPolicy (see `kube/network.py`): egress to DNS, the store and its
    own pods only; serving pods accept traffic on their port only."""
    network_extra_egress: tuple[dict[str, Any], ...] = ()
    """Egress rules (NetworkPolicyEgressRule objects) added to every run's NetworkPolicy."""
    network_store_peers: tuple[dict[str, Any], ...] = ()
    """`to` peers of the store's egress rule (e.g. its ipBlock); empty: any address on its port."""
    prometheus_url: str | None = None
    """Prometheus that scrapes the serving pods' vLLM metrics (the chart's `operator.prometheusUrl`):
    a canary step is judged on its figures. None: canary steps pass on time alone (and say so)."""

    def allowlists(self) -> Allowlists:
        """The lists the reconciler checks each resource against."""
        return Allowlists(
            images=self.allowed_images,
            service_accounts=self.allowed_service_accounts,
            secrets=self.allowed_secrets,
            default_image=self.trainer_image,
            default_secret=self.s3_secret,
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Settings from `LMFORGE_*` variables; unset ones keep their defaults."""
        e = os.environ if env is None else env
        namespaces = tuple(n for n in (e.get("LMFORGE_NAMESPACES") or "").split(",") if n.strip())
        tolerations = json.loads(e.get("LMFORGE_DEFAULT_TOLERATIONS") or "[]")
        extra = json.loads(e.get("LMFORGE_STAGE_ENV") or "{}")
        return cls(
            store=e.get("LMFORGE_STORE") or cls.store,
            trainer_image=e.get("LMFORGE_TRAINER_IMAGE") or DEFAULT_TRAINER_IMAGE,
            serving_image=e.get("LMFORGE_SERVING_IMAGE") or DEFAULT_SERVING_IMAGE,
            stage_metrics_port=int(e.get("LMFORGE_STAGE_METRICS_PORT") or 9400),
            image_pull_policy=e.get("LMFORGE_IMAGE_PULL_POLICY") or "IfNotPresent",
            s3_secret=e.get("LMFORGE_S3_SECRET") or None,
            s3_endpoint=e.get("LMFORGE_S3_ENDPOINT") or e.get("AWS_ENDPOINT_URL") or None,
            namespaces=tuple(n.strip() for n in namespaces),
            metrics_port=int(e.get("LMFORGE_METRICS_PORT") or 8080),
            metrics_addr=e.get("LMFORGE_METRICS_ADDR") or "0.0.0.0",
            workers=max(1, int(e.get("LMFORGE_WORKERS") or 8)),
            master_port=int(e.get("LMFORGE_MASTER_PORT") or 29500),
            default_tolerations=tuple(tolerations),
            store_cleanup=_bool(e.get("LMFORGE_STORE_CLEANUP")),
            run_as_user=int(e.get("LMFORGE_RUN_AS_USER") or 1000),
            poll_seconds=float(e.get("LMFORGE_POLL_SECONDS") or 10.0),
            tracking_uri=e.get("LMFORGE_TRACKING_URI") or None,
            extra_env={str(k): str(v) for k, v in extra.items()},
            allowed_images=_patterns(e.get("LMFORGE_ALLOWED_IMAGES")),
            allowed_service_accounts=_patterns(e.get("LMFORGE_ALLOWED_SERVICE_ACCOUNTS")),
            allowed_secrets=_patterns(e.get("LMFORGE_ALLOWED_SECRETS")),
            network_policies=_bool(e.get("LMFORGE_NETWORK_POLICIES")),
            network_extra_egress=tuple(json.loads(e.get("LMFORGE_NETWORK_EXTRA_EGRESS") or "[]")),
            network_store_peers=tuple(json.loads(e.get("LMFORGE_NETWORK_STORE_PEERS") or "[]")),
            prometheus_url=e.get("LMFORGE_PROMETHEUS_URL") or None,
            default_resources={
                str(k): {str(n): str(q) for n, q in v.items()}
                for k, v in json.loads(e.get("LMFORGE_DEFAULT_RESOURCES") or "{}").items()
            },
        )
