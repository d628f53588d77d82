"""The chart's alert rules and Grafana dashboard against a real Prometheus scraping the real
operator: the rules pass `promtool check rules` and load; LMForgeJobFailed fires when a stage
fails; every PromQL expression of the dashboard evaluates and returns data while a pipeline runs
(one resource failed, one training with progress, one stage finished)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import yaml
from support.prometheus import free_port, prometheus

from lmforge.api.contract import PROGRESS_KEY, ProgressRecord, StageName
from lmforge.store import open_store

from .controlplane import ControlPlane, eventually
from .operator_harness import finish_job, publish_result, running_operator, stage_output, wait_job

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "lmforge"


def rules_file(cp: ControlPlane, tmp: Path) -> Path:
    """The PrometheusRule the chart renders, as a plain Prometheus rules file."""
    out = cp.helm(
        "template",
        "lmf",
        str(CHART),
        "--kube-version=1.37.0",
        "--set=metrics.prometheusRule.enabled=true",
        "--set=metrics.prometheusRule.failedFor=0s",
        "--show-only=templates/prometheusrule.yaml",
    ).stdout
    rule = yaml.safe_load(out)
    path = tmp / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    check = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    return path


def dashboard_queries() -> list[str]:
    board: dict[str, Any] = json.loads((CHART / "files" / "dashboard.json").read_text())
    return [t["expr"] for p in board["panels"] for t in p.get("targets", [])]


def dataset(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "lmforge.io/v1alpha1",
        "kind": "Dataset",
        "metadata": {"name": name},
        "spec": {"sources": [{"name": "s", "uri": "s3://b/x.jsonl", "license": "MIT"}]},
    }


def test_alert_fires_on_a_failed_stage_and_every_dashboard_query_returns_data(
    control_plane: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    cp, ns = control_plane, namespace
    port = free_port()
    env = {"LMFORGE_METRICS_PORT": str(port), "LMFORGE_METRICS_ADDR": "127.0.0.1"}
    rules = rules_file(cp, tmp_path)
    with (
        running_operator(cp, ns, env=env) as op,
        prometheus({"operator": [f"127.0.0.1:{port}"]}, rule_files=[rules]) as prom,
    ):
        loaded = json.loads(__import__("urllib.request").request.urlopen(f"{prom.url}/api/v1/rules").read())
        names = {r["name"] for g in loaded["data"]["groups"] for r in g["rules"]}
        assert {"LMForgeJobFailed", "LMForgeReleaseNotReady", "LMForgeProgressStalled"} <= names
        # A stage that fails for good (exit 2: not retried) ...
        cp.apply(dataset("broken"), namespace=ns)
        job = wait_job(cp, op, ns, "lmforge.io/dataset=broken")
        finish_job(cp, op, ns, job, "failed", exit_code=2)
        # ... one that finishes (a stage duration is observed) ...
        cp.apply(dataset("done"), namespace=ns)
        job = wait_job(cp, op, ns, "lmforge.io/dataset=done")
        publish_result(op.store, stage_output(cp, ns, job), StageName.DATASET, {"shards": "s3://b/s"})
        finish_job(cp, op, ns, job)
        # ... and a pretraining run that reports progress.
        cp.apply(
            {
                "apiVersion": "lmforge.io/v1alpha1",
                "kind": "PretrainJob",
                "metadata": {"name": "train"},
                "spec": {"datasetRef": {"name": "done"}, "training": {"maxSteps": 100}},
            },
            namespace=ns,
        )
        job = wait_job(cp, op, ns, "lmforge.io/pretrainjob=train")
        record = ProgressRecord(
            stage=StageName.PRETRAIN, run_id="x", step=10, total=100, metrics={"loss": 3.5, "tokens_per_second": 1234.0}
        )
        open_store(op.store).put_bytes(
            f"{stage_output(cp, ns, job)}/{PROGRESS_KEY}", record.model_dump_json(by_alias=True).encode()
        )

        firing = prom.eventually('ALERTS{alertname="LMForgeJobFailed",alertstate="firing"}', timeout=90)
        assert {(s["metric"]["kind"], s["metric"]["name"]) for s in firing} == {("Dataset", "broken")}
        for expr in dashboard_queries():
            result = eventually(
                lambda expr=expr: prom.query(expr),
                timeout=120,
                interval=1,
                what=f"data for the dashboard query {expr!r}",
            )
            assert result, expr
