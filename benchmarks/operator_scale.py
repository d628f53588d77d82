"""Operator scale on the local control plane: `kubectl apply` → child Job created, p50/p99, for 200
resources applied at once; and the operator's peak RSS with 1,000 resources.
Both ends of each latency are arrivals on this process's own watches (the resource's ADDED event,
then its Job's), taken once a warm-up resource has shown that the operator is watching.

Baseline, measured in the same run on the same cluster: Kubernetes' own Job controller reacting to
200 Jobs applied at once (Job first seen → its Pod first seen) — the built-in controller doing the
analogous parent → child step, so the ratio compares our reaction time with kube-controller-manager's.

    python benchmarks/operator_scale.py [--resources 200] [--rss-resources 1000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.cluster.controlplane import ControlPlane, build, eventually  # noqa: E402
from tests.cluster.operator_harness import running_operator  # noqa: E402
from tests.support.prometheus import free_port  # noqa: E402


def dataset(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "lmforge.io/v1alpha1",
        "kind": "Dataset",
        "metadata": {"name": name},
        "spec": {"sources": [{"name": "s", "uri": "s3://b/x.jsonl", "license": "MIT"}]},
    }


def plain_job(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "x"}]}}},
    }  # not suspended: the Job controller makes its pod


class Watcher:
    """Arrival time (`time.time()`, this process) of each object's first ADDED event on a watch of
    `path`, keyed by `key_of(obj)`. A watch, not polling: an event arrives within milliseconds of
    the write, and it adds no LIST load to the API server the operator is measured against.
    creationTimestamps are second-resolution and so cannot time sub-second reactions."""

    def __init__(self, cp: ControlPlane, path: str, key_of: Any) -> None:
        status, body = cp.request("GET", path, timeout=30)
        assert status == 200, body
        self.seen: dict[str, float] = {}
        self._key_of = key_of
        self._stopped = threading.Event()
        url = f"{cp.server}{path}?watch=1&timeoutSeconds=360&resourceVersion={body['metadata']['resourceVersion']}"
        req = urllib.request.Request(url)
        req.add_header("Authorization", f"Bearer {cp.admin_token}")
        resp = urllib.request.urlopen(req, timeout=400, context=cp.ssl_context())
        # A daemon thread owns the response: closing it from another thread while this one reads
        # deadlocks on the reader's lock, so `stop` only stops recording; the server ends the
        # watch after timeoutSeconds, or the control plane's stop does.
        threading.Thread(target=self._read, args=(resp,), daemon=True).start()

    def _read(self, resp: Any) -> None:
        try:
            for line in resp:
                now = time.time()
                if self._stopped.is_set():
                    break
                event = json.loads(line)
                if event.get("type") == "ADDED":
                    key = self._key_of(event["object"])
                    if key:
                        self.seen.setdefault(key, now)
        except (OSError, ValueError):
            pass  # the control plane went away
        finally:
            resp.close()

    def stop(self) -> None:
        self._stopped.set()


def parent_to_child(
    cp: ControlPlane, ns: str, objs: list[dict[str, Any]], parents: str, children: str, n: int, parent_of: Any
) -> list[float]:
    """Seconds from each parent's arrival on a watch to its child's, while `kubectl apply` creates
    the parents (all at once, as a user would)."""
    parent_w = Watcher(cp, parents, lambda obj: obj["metadata"]["name"])
    child_w = Watcher(cp, children, parent_of)
    try:
        cp.apply(*objs, namespace=ns)
        eventually(lambda: len(child_w.seen) >= n, timeout=300, interval=0.2, what=f"{n} children")
    finally:
        parent_w.stop()
        child_w.stop()
    parents_at, children_at = dict(parent_w.seen), dict(child_w.seen)
    return sorted(children_at[k] - parents_at[k] for k in children_at if k in parents_at)


def warm_up(cp: ControlPlane, op: Any, ns: str) -> None:
    """Wait until the operator watches and acts: one resource's Job exists. Its start (imports,
    initial LISTs: seconds on 2 busy cores) is not what we measure; a fixed sleep may be too short
    and would turn the first applies into one initial-LIST burst."""
    cp.apply(dataset("warm-up"), namespace=ns)
    eventually(
        lambda: cp.kubectl_json("get", "jobs", f"--namespace={ns}")["items"],
        timeout=120,
        what="the operator's first Job",
        abort=op.dead,
    )


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]


def histograms(port: int) -> dict[str, dict[str, float]]:
    """Where the operator's time went, from its own /metrics: per histogram the count, the mean and
    the upper bound of the bucket holding the 99th percentile (seconds)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        if family.name not in ("lmforge_workqueue_wait_seconds", "lmforge_reconcile_duration_seconds"):
            continue
        buckets: dict[float, float] = {}
        total = count = 0.0
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                le = float(sample.labels["le"])
                buckets[le] = buckets.get(le, 0.0) + sample.value
            elif sample.name.endswith("_sum"):
                total += sample.value
            elif sample.name.endswith("_count"):
                count += sample.value
        p99 = next((le for le, n in sorted(buckets.items()) if n >= 0.99 * count), float("inf"))
        out[family.name] = {"count": count, "mean_s": round(total / max(count, 1), 4), "p99_le_s": p99}
    return out


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--resources", type=int, default=200)
    parser.add_argument("--rss-resources", type=int, default=1000)
    parser.add_argument("--skip-baseline", action="store_true", help="profiling only: no baseline figures")
    args = parser.parse_args()
    n = args.resources
    cp = ControlPlane(bin_dir=build())
    cp.start()
    try:
        base_ns = cp.create_namespace("bench-baseline")
        base = (
            [float("nan")]
            if args.skip_baseline
            else parent_to_child(
                cp,
                base_ns,
                [plain_job(f"j{i:04d}") for i in range(n)],
                f"/apis/batch/v1/namespaces/{base_ns}/jobs",
                f"/api/v1/namespaces/{base_ns}/pods",
                n,
                lambda pod: (pod["metadata"].get("labels") or {}).get("batch.kubernetes.io/job-name"),
            )
        )
        ns = cp.create_namespace("bench-operator")
        port = free_port()
        with running_operator(
            cp, ns, env={"LMFORGE_METRICS_PORT": str(port), "LMFORGE_METRICS_ADDR": "127.0.0.1"}
        ) as op:
            warm_up(cp, op, ns)
            ours = parent_to_child(
                cp,
                ns,
                [dataset(f"d{i:04d}") for i in range(n)],
                f"/apis/lmforge.io/v1alpha1/namespaces/{ns}/datasets",
                f"/apis/batch/v1/namespaces/{ns}/jobs",
                n,
                lambda job: (job["metadata"].get("labels") or {}).get("lmforge.io/dataset"),
            )
            spent = histograms(port)
            assert op.proc is not None
            rss_ns = cp.create_namespace("bench-rss")
        rss = float("nan")
        if args.rss_resources:  # 0 skips the RSS half (e.g. while profiling latency)
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
            "baseline_job_controller_job_to_pod_p50_s": round(pct(base, 50), 3),
            "baseline_job_controller_job_to_pod_p99_s": round(pct(base, 99), 3),
            "ratio_p99_operator_over_baseline": round(pct(ours, 99) / max(pct(base, 99), 1e-3), 2),
            "operator_queue_wait": spent.get("lmforge_workqueue_wait_seconds"),
            "operator_reconcile": spent.get("lmforge_reconcile_duration_seconds"),
            "rss_resources": args.rss_resources,
            "operator_peak_rss_mb": round(rss, 1),
        }
        print(json.dumps(result, indent=2))
    finally:
        cp.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
