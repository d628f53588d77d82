"""Operator scale on the local control plane: `kubectl apply` → child Job created, p50/p99, for 200
resources applied at once; and the operator's peak RSS with 1,000 resources.

Baseline, measured in the same run: the API server itself — the time from `kubectl apply` of 200
Jobs (created directly, no operator) until each Job exists — so the ratio says what the operator
adds on top of the control plane's own write path.

    python benchmarks/operator_scale.py [--resources 200] [--rss-resources 1000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.cluster.controlplane import ControlPlane, build, eventually  # noqa: E402
from tests.cluster.operator_harness import running_operator  # noqa: E402


def dataset(name: str) -> dict[str, Any]:
    return {"apiVersion": "lmforge.io/v1alpha1", "kind": "Dataset", "metadata": {"name": name},
            "spec": {"sources": [{"name": "s", "uri": "s3://b/x.jsonl", "license": "MIT"}]}}


def plain_job(name: str) -> dict[str, Any]:
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
            "spec": {"suspend": True, "template": {"spec": {"restartPolicy": "Never", "containers": [
                {"name": "c", "image": "x"}]}}}}


def apply_and_wait(cp: ControlPlane, ns: str, objs: list[dict[str, Any]], n: int) -> list[float]:
    """Wall seconds from the start of `kubectl apply` to each Job's first sighting (watch-free poll)."""
    start = time.time()
    seen: dict[str, float] = {}
    cp.apply(*objs, namespace=ns)
    deadline = start + 300
    while len(seen) < n and time.time() < deadline:
        status, body = cp.request("GET", f"/apis/batch/v1/namespaces/{ns}/jobs?resourceVersion=0")
        now = time.time()
        for item in body.get("items", []) if status == 200 else []:
            seen.setdefault(item["metadata"]["name"], now)
        time.sleep(0.05)
    return sorted(t - start for t in seen.values())


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--resources", type=int, default=200)
    parser.add_argument("--rss-resources", type=int, default=1000)
    args = parser.parse_args()
    n = args.resources
    cp = ControlPlane(bin_dir=build())
    cp.start()
    try:
        base_ns = cp.create_namespace("bench-baseline")
        base = apply_and_wait(cp, base_ns, [plain_job(f"j{i:04d}") for i in range(n)], n)
        ns = cp.create_namespace("bench-operator")
        with running_operator(cp, ns) as op:
            time.sleep(3)  # let the operator finish starting (its start is not what we measure)
            ours = apply_and_wait(cp, ns, [dataset(f"d{i:04d}") for i in range(n)], n)
            assert op.proc is not None
            rss_ns = cp.create_namespace("bench-rss")
        with running_operator(cp, rss_ns) as op2:
            time.sleep(3)
            m = args.rss_resources
            for start in range(0, m, 250):
                cp.apply(*[dataset(f"r{i:04d}") for i in range(start, min(m, start + 250))], namespace=rss_ns)

            def settled() -> bool:
                items = cp.kubectl_json("get", "datasets", f"--namespace={rss_ns}", timeout=120)["items"]
                return len(items) == m and all((i.get("status") or {}).get("phase") for i in items)

            eventually(settled, timeout=600, interval=2, what=f"{m} resources reconciled", abort=op2.dead)
            assert op2.proc is not None
            rss = peak_rss_mb(op2.proc.pid)
        result = {
            "resources": n,
            "operator_apply_to_job_p50_s": round(pct(ours, 50), 3),
            "operator_apply_to_job_p99_s": round(pct(ours, 99), 3),
            "baseline_apiserver_apply_to_job_p50_s": round(pct(base, 50), 3),
            "baseline_apiserver_apply_to_job_p99_s": round(pct(base, 99), 3),
            "ratio_p99_operator_over_baseline": round(pct(ours, 99) / max(pct(base, 99), 1e-3), 2),
            "rss_resources": args.rss_resources,
            "operator_peak_rss_mb": round(rss, 1),
        }
        print(json.dumps(result, indent=2))
    finally:
        cp.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
