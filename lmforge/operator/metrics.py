"""Prometheus metrics of the operator (scraped by the chart's ServiceMonitor/PodMonitor).

Per-resource gauges carry `namespace`, `kind` and `name` labels and are removed when the resource
goes away, so the series count tracks the live resources.
"""

from __future__ import annotations

from collections import Counter as Tally
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from lmforge.api.meta import Phase, Status

REGISTRY = CollectorRegistry()

RECONCILES = Counter(
    "lmforge_reconciles", "Reconciles by kind and outcome (ok, invalid, error).", ["kind", "outcome"], registry=REGISTRY
)
RECONCILE_SECONDS = Histogram(
    "lmforge_reconcile_duration_seconds",
    "Wall time of one reconcile.",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
QUEUE_WAIT_SECONDS = Histogram(
    "lmforge_workqueue_wait_seconds",
    "Time a resource waited in the work queue before its reconcile started.",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
REGISTRY_FAILURES = Counter(
    "lmforge_registry_alias_failures",
    "Model-registry (MLflow) alias requests that failed; each is retried.",
    registry=REGISTRY,
)
RESOURCES = Gauge("lmforge_resources", "Resources by kind and phase.", ["kind", "phase"], registry=REGISTRY)
JOB_SECONDS = Histogram(
    "lmforge_stage_duration_seconds",
    "Start to finish of a resource's stage run.",
    ["kind", "outcome"],
    buckets=(60, 300, 900, 3600, 4 * 3600, 12 * 3600, 48 * 3600, 7 * 86400),
    registry=REGISTRY,
)
_LABELS = ["namespace", "kind", "name"]
LOSS = Gauge("lmforge_training_loss", "Latest training loss relayed from status.", _LABELS, registry=REGISTRY)
TOKENS_PER_SECOND = Gauge(
    "lmforge_tokens_per_second", "Latest training throughput relayed from status.", _LABELS, registry=REGISTRY
)
PROGRESS_UPDATED = Gauge(
    "lmforge_progress_updated_timestamp_seconds",
    "When the running stage last reported progress (Unix time).",
    _LABELS,
    registry=REGISTRY,
)
RUNNING = Gauge("lmforge_resource_running", "1 while the resource's stage is running.", _LABELS, registry=REGISTRY)
READY = Gauge("lmforge_resource_ready", "1 when the resource is Ready.", _LABELS, registry=REGISTRY)
FAILED = Gauge("lmforge_resource_failed", "1 when the resource has failed.", _LABELS, registry=REGISTRY)
_PER_RESOURCE = (LOSS, TOKENS_PER_SECOND, PROGRESS_UPDATED, RUNNING, READY, FAILED)


def _ts(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class ResourceMetrics:
    """Keeps the by-phase gauge and the per-resource gauges in step with the statuses we write."""

    def __init__(self) -> None:
        self._phase: dict[tuple[str, str, str], tuple[str, str]] = {}

    def observe(self, namespace: str, kind: str, name: str, status: Status) -> None:
        key = (namespace, kind, name)
        old = self._phase.get(key)
        self._phase[key] = (kind, status.phase.value)
        if old != self._phase[key]:
            self._refresh_phases()
            finished = status.phase in (Phase.SUCCEEDED, Phase.FAILED)
            start, end = _ts(status.started_at), _ts(status.completed_at)
            if finished and start is not None and (end or status.phase is Phase.FAILED):
                end = end or datetime.now().timestamp()
                JOB_SECONDS.labels(kind, status.phase.value).observe(max(0.0, end - start))
        labels = (namespace, kind, name)
        if "loss" in status.metrics:
            LOSS.labels(*labels).set(status.metrics["loss"])
        if "tokens_per_second" in status.metrics:
            TOKENS_PER_SECOND.labels(*labels).set(status.metrics["tokens_per_second"])
        updated = _ts(status.progress.updated if status.progress else None)
        if updated is not None:
            PROGRESS_UPDATED.labels(*labels).set(updated)
        ready = any(c.type == "Ready" and c.status.value == "True" for c in status.conditions)
        READY.labels(*labels).set(1 if ready else 0)
        FAILED.labels(*labels).set(1 if status.phase is Phase.FAILED else 0)
        RUNNING.labels(*labels).set(1 if status.phase is Phase.RUNNING else 0)

    def forget(self, namespace: str, kind: str, name: str) -> None:
        """Drop a deleted resource's series."""
        if self._phase.pop((namespace, kind, name), None) is not None:
            self._refresh_phases()
        for gauge in _PER_RESOURCE:
            try:
                gauge.remove(namespace, kind, name)
            except KeyError:
                pass

    def _refresh_phases(self) -> None:
        tally = Tally(self._phase.values())
        for kind in {k for k, _ in tally} | {k for k, _ in self._seen_pairs()}:
            for phase in Phase:
                RESOURCES.labels(kind, phase.value).set(tally.get((kind, phase.value), 0))

    def _seen_pairs(self) -> set[tuple[str, str]]:
        return {(s.labels["kind"], s.labels["phase"]) for m in RESOURCES.collect() for s in m.samples}


def serve(port: int, addr: str = "0.0.0.0") -> None:
    """Start the /metrics endpoint on a background thread (0 disables it)."""
    if port:
        start_http_server(port, addr=addr, registry=REGISTRY)
