"""`lmforge run --tracking-uri` on the real Dataset and PretrainJob stages of tiny-ci: both runs in a
real MLflow server (loss with its steps, the lineage tag), TensorBoard events under the store, and the
report pointing at both."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.mlflow import mlflow_server

from .test_tiny_pipeline import finish, manifests, start

pytestmark = [pytest.mark.slow, pytest.mark.ml]


def test_dataset_and_pretrain_are_tracked_in_mlflow_and_tensorboard(tmp_path: Path) -> None:
    store = tmp_path / "store"
    with mlflow_server() as mlflow:
        names = ["01-dataset.yaml", "02-pretrain.yaml"]
        proc = start(
            [str(manifests(tmp_path, names)), "--store", str(store), "--tracking-uri", mlflow.url, "--no-serve"],
            tmp_path,
        )
        assert finish(proc, timeout=1200) == 0
        runs = mlflow.eventually("runs", lambda rs: len(rs) == 2 and {r["status"] for r in rs} == {"FINISHED"})
    by_kind = {r["tags"]["lmforge.kind"]: r for r in runs}
    ds, pt = by_kind["Dataset"], by_kind["PretrainJob"]
    assert pt["name"] == pt["tags"]["lmforge.run_id"] and pt["name"].startswith("tiny-base-")
    assert pt["tags"]["lmforge.input_run.Dataset/tiny-corpus"] == ds["run_id"]
    assert pt["params"]["training.maxSteps"] == "60"
    steps = [s for s, _ in pt["metrics"]["loss"]]
    assert steps == sorted(steps) and max(steps) == 60 and len(set(steps)) > 5
    assert any(a.startswith("card/") for a in ds["artifacts"])
    events = list((store / "tensorboard" / pt["name"]).glob("events.out.tfevents.*"))
    assert events and b"loss" in events[0].read_bytes()
    assert "tensorboard --logdir" in (store / "report.md").read_text()
