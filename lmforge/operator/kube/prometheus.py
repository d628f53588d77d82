"""The canary's and the stable's vLLM metrics from Prometheus.

Placeholder body with the agreed signature (the lead replaces it)."""

from __future__ import annotations

from lmforge.operator.reconcile.analysis import CanaryMetrics


def canary_metrics(url: str, namespace: str, stable_run: str, canary_run: str, window_s: float) -> CanaryMetrics:
    """Never raises; unreachable → `error` set."""
    return CanaryMetrics(stable=None, canary=None, window_s=window_s, error=f"Prometheus at {url} not queried yet")
