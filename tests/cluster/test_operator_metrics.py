"""Prometheus (Debian's) scrapes the running operator's /metrics while it reconciles."""

from __future__ import annotations

from pathlib import Path

from support.prometheus import free_port, prometheus

from .controlplane import ControlPlane
from .operator_harness import running_operator

REPO = Path(__file__).resolve().parents[2]


def test_prometheus_scrapes_operator_metrics(control_plane: ControlPlane, namespace: str) -> None:
    port = free_port()
    env = {"LMFORGE_METRICS_PORT": str(port), "LMFORGE_METRICS_ADDR": "127.0.0.1"}
    with running_operator(control_plane, namespace, env=env), prometheus({"operator": [f"127.0.0.1:{port}"]}) as prom:
        control_plane.kubectl("apply", "-n", namespace, "-f", str(REPO / "examples" / "tiny"))
        reconciles = prom.eventually('sum(lmforge_reconciles_total{outcome="ok"}) > 0', timeout=60)
        assert float(reconciles[0]["value"][1]) > 0
        # The six tiny resources show up by kind and phase: the Dataset runs, its dependents wait.
        waiting = prom.eventually('lmforge_resources{kind="PretrainJob",phase="Waiting"} == 1', timeout=60)
        assert waiting
        latency = prom.eventually("lmforge_reconcile_duration_seconds_count > 0", timeout=30)
        assert {s["metric"]["kind"] for s in latency} >= {"Dataset", "PretrainJob"}
