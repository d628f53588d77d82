"""Experiment tracking: run shape, TensorBoard event files, faults, and a real MLflow server.

The server tests read back through the real `MlflowClient` (tests/support/mlflow.py): runs named after
the run id, tags, the flattened spec as parameters, metrics with their steps, the small artifacts,
lineage between runs, and the ModelRelease's registered versions (tagged with their run id; the
aliases are the operator's, tests/embedded/test_registry_aliases.py).
"""

from __future__ import annotations

import io
import socket
import struct
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.mlflow import MlflowServer, free_port, mlflow_server

from lmforge.api.contract import InputArtifacts, StageName, StageSpec
from lmforge.store import open_store
from lmforge.store.mlflow import MlflowRest
from lmforge.trainer.progress import ProgressReporter, tracking_failures
from lmforge.trainer.tracking import flatten, run_info, trackers_for
from lmforge.trainer.tracking.mlflow import SEND_EVERY_S, MlflowTracker
from lmforge.trainer.tracking.tensorboard import TensorBoardTracker, crc32c, masked_crc


def spec(
    kind: str,
    name: str,
    stage: StageName,
    run_id: str,
    store: Path,
    *,
    inputs: dict[str, InputArtifacts] | None = None,
    body: dict[str, Any] | None = None,
) -> StageSpec:
    resource = {
        "apiVersion": "lmforge.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": name},
        "spec": body
        or {
            "training": {"maxSteps": 5, "microBatchSize": 2},
            "tags": ["a", "b"],
            "tracking": {"tags": {"team": "llm"}},
        },
    }
    return StageSpec(
        stage=stage,
        resource=resource,
        store=str(store),
        output=f"x/{name}/{run_id}",
        run_id=run_id,
        inputs=inputs or {},
    )


def reporter(s: StageSpec, tracker: Any) -> ProgressReporter:
    return ProgressReporter(s.stage, s.run_id, None, stream=io.StringIO(), tracker=tracker)


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    return free_port()


# Run shape ------------------------------------------------------------------------------------------


def test_flatten_gives_dotted_keys_and_json_leaves() -> None:
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": "x", "e": {}}) == {
        "a.b": "1",
        "a.c": "[1, 2]",
        "d": "x",
        "e": "{}",
    }


def test_run_info_names_the_run_after_its_id_and_leaves_tracking_out_of_params(tmp_path: Path) -> None:
    s = spec(
        "PretrainJob",
        "tiny",
        StageName.PRETRAIN,
        "tiny-abc",
        tmp_path,
        inputs={"Dataset/d": InputArtifacts(kind="Dataset", name="d", artifacts={"shards": "file:///s"})},
    )
    info = run_info(s)
    assert info.run_id == "tiny-abc" and info.experiment == "lmforge"
    assert info.tags["lmforge.kind"] == "PretrainJob" and info.tags["lmforge.namespace"] == "default"
    assert info.tags["team"] == "llm" and info.tags["lmforge.inputs"] == "Dataset/d"
    assert len(info.tags["lmforge.spec_hash"]) == 12
    assert info.params["training.maxSteps"] == "5" and not any(k.startswith("tracking") for k in info.params)


def test_no_tracker_without_a_uri_or_when_disabled_or_on_other_workers(tmp_path: Path) -> None:
    s = spec("PretrainJob", "t", StageName.PRETRAIN, "t-1", tmp_path)
    assert trackers_for(s, {}).trackers == []
    off = spec("PretrainJob", "t", StageName.PRETRAIN, "t-1", tmp_path, body={"tracking": {"enabled": False}})
    assert trackers_for(off, {"MLFLOW_TRACKING_URI": "http://127.0.0.1:1"}).trackers == []
    assert trackers_for(s, {"MLFLOW_TRACKING_URI": "http://127.0.0.1:1", "RANK": "1"}).trackers == []


# TensorBoard ----------------------------------------------------------------------------------------


def read_events(directory: Path) -> list[bytes]:
    """The TFRecords of every event file, each checked against its CRCs."""
    out = []
    for path in sorted(directory.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        i = 0
        while i < len(data):
            header = data[i : i + 8]
            (length,) = struct.unpack("<Q", header)
            assert struct.unpack("<I", data[i + 8 : i + 12])[0] == masked_crc(header)
            body = data[i + 12 : i + 12 + length]
            assert struct.unpack("<I", data[i + 12 + length : i + 16 + length])[0] == masked_crc(body)
            out.append(body)
            i += 16 + length
    return out


def test_crc32c_matches_the_standard_check_value() -> None:
    assert crc32c(b"123456789") == 0xE3069283


def test_tensorboard_events_carry_the_scalars_and_steps(tmp_path: Path) -> None:
    s = spec("PretrainJob", "t", StageName.PRETRAIN, "t-1", tmp_path)
    tracker = TensorBoardTracker(tmp_path / "tb" / "t-1")
    rep = reporter(s, tracker)
    for step in (1, 2, 3):
        rep.progress(step, 3, metrics={"loss": 4.0 - step})
    rep.result({}, {"loss": 0.5})
    tracker.close()
    events = read_events(tmp_path / "tb" / "t-1")
    assert b"brain.Event:2" in events[0]
    assert len(events) == 5  # file version, 3 steps, the result
    loss_3 = struct.pack("<f", 1.0)
    assert b"loss" in events[3] and loss_3 in events[3] and events[3][9:11] == b"\x10\x03"  # step 3


# Faults (no server) ---------------------------------------------------------------------------------


def test_an_unreachable_server_neither_fails_nor_slows_the_stage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    s = spec("PretrainJob", "t", StageName.PRETRAIN, "t-1", tmp_path)
    before = sum(tracking_failures().values())
    tracker = MlflowTracker(f"http://127.0.0.1:{closed_port()}", run_info(s))
    rep = reporter(s, tracker)
    t0 = time.perf_counter()
    for step in range(1, 2001):
        rep.progress(step, 2000, metrics={"loss": 1.0, "lr": 1e-3})
    rep.result({"model": "file:///m"})
    spent = time.perf_counter() - t0
    t1 = time.perf_counter()
    tracker.close(timeout=1.0)
    closing = time.perf_counter() - t1
    assert spent < 2.0, f"2000 records took {spent:.2f}s with the server away"
    assert closing < 3.0
    assert sum(tracking_failures().values()) > before
    err = capsys.readouterr().err
    assert "warning: tracking:" in err and "could not be sent" in err


def test_a_full_queue_drops_records_instead_of_waiting(tmp_path: Path) -> None:
    """A server that accepts connections and never answers: the queue fills, `record` still returns."""
    with socket.socket() as sink:
        sink.bind(("127.0.0.1", 0))
        sink.listen(16)
        s = spec("PretrainJob", "t", StageName.PRETRAIN, "t-1", tmp_path)
        tracker = MlflowTracker(f"http://127.0.0.1:{sink.getsockname()[1]}", run_info(s), queue_size=10)
        t0 = time.perf_counter()
        for step in range(1000):
            tracker.record(reporter(s, None).progress(step, metrics={"loss": 1.0}))
        assert time.perf_counter() - t0 < 2.0
        assert tracker.dropped > 0
        tracker.close(timeout=0.5)


# A real MLflow server -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mlflow() -> Iterator[MlflowServer]:
    with mlflow_server() as server:
        yield server


def runs_by_name(server: MlflowServer) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in server.query("runs")}


def test_stage_runs_land_in_mlflow_with_steps_tags_params_artifacts_and_lineage(
    mlflow: MlflowServer, tmp_path: Path
) -> None:
    store = open_store(str(tmp_path / "store"))
    store.put_bytes("x/data/card/card.md", b"# Dataset card\n")
    store.put_bytes("x/data/card/card.json", b'{"tokens": 10}')
    store.put_bytes("x/data/shards/train-0.bin", b"\0" * 1024)
    card, shards = store.url("x/data/card"), store.url("x/data/shards")

    ds = spec("Dataset", "data", StageName.DATASET, "data-111", tmp_path / "store", body={"seqLen": 64})
    tracker = MlflowTracker(mlflow.url, run_info(ds))
    rep = reporter(ds, tracker)
    rep.progress(10, 10, metrics={"docs_per_second": 5.0}, unit="document")
    rep.result({"card": card, "shards": shards}, {"tokens": 10.0})
    tracker.close()

    inputs = {"Dataset/data": InputArtifacts(kind="Dataset", name="data", artifacts={"card": card, "shards": shards})}
    pt = spec("PretrainJob", "tiny", StageName.PRETRAIN, "tiny-222", tmp_path / "store", inputs=inputs)
    tracker = MlflowTracker(mlflow.url, run_info(pt))
    rep = reporter(pt, tracker)
    for step in range(1, 6):
        rep.progress(step, 5, metrics={"loss": 5.0 - step, "tokens_per_second": 100.0 * step})
    rep.result({"model": "file:///nowhere/model"}, {"loss": 0.9})
    tracker.close()
    assert tracker.failures == 0

    runs = mlflow.eventually("runs", lambda rs: {r["status"] for r in rs} == {"FINISHED"} and len(rs) == 2)
    by = {r["name"]: r for r in runs}
    d, p = by["data-111"], by["tiny-222"]
    assert d["experiment"] == "lmforge" and d["tags"]["lmforge.kind"] == "Dataset"
    assert sorted(d["artifacts"]) == ["card/card.json", "card/card.md"]  # cards uploaded, shards by reference
    assert d["tags"]["lmforge.artifact.shards"] == shards
    assert p["tags"]["lmforge.name"] == "tiny" and p["tags"]["team"] == "llm"
    assert p["params"]["training.maxSteps"] == "5" and p["params"]["tags"] == '["a", "b"]'
    assert [s for s, _ in p["metrics"]["loss"][:5]] == [1, 2, 3, 4, 5]
    assert p["metrics"]["loss"][0][1] == 4.0
    assert p["tags"]["lmforge.input_run.Dataset/data"] == d["run_id"]
    assert p["tags"]["lmforge.parent_run"] == d["run_id"]


def serve_release(mlflow: MlflowServer, tmp_path: Path, run_id: str, model: str) -> MlflowTracker:
    inputs = {
        "ModelRelease/rel": InputArtifacts(
            kind="ModelRelease", name="rel", artifacts={"model": model}, lineage=["Dataset/data", "PretrainJob/tiny"]
        ),
        "EvalSuite/evals": InputArtifacts(kind="EvalSuite", name="evals", metrics={"hellaswag.acc": 0.31}),
    }
    s = spec(
        "ModelRelease",
        "rel",
        StageName.SERVE,
        run_id,
        tmp_path,
        inputs=inputs,
        body={"modelRef": {"kind": "PretrainJob", "name": "tiny"}, "tracking": {"registeredModel": "tiny-chat"}},
    )
    tracker = MlflowTracker(mlflow.url, run_info(s))
    rep = reporter(s, tracker)
    rep.progress(3, 3, metrics={"ready_seconds": 1.5}, force=True)
    rep.result({"endpoint": "http://127.0.0.1:8000/v1"}, {"ready_seconds": 1.5})
    return tracker


def test_a_served_release_registers_its_version_tagged_with_its_run_id_and_leaves_the_aliases_alone(
    mlflow: MlflowServer, tmp_path: Path
) -> None:
    first = serve_release(mlflow, tmp_path, "rel-aaa", "file:///store/rel-aaa/model")
    versions = mlflow.eventually("model", lambda vs: len(vs) == 1, name="tiny-chat")
    assert versions[0]["aliases"] == []  # `champion` follows the rollout: the operator sets it
    assert versions[0]["tags"]["lmforge.run_id"] == "rel-aaa"
    assert versions[0]["tags"]["lmforge.model_uri"] == "file:///store/rel-aaa/model"
    assert versions[0]["tags"]["eval.evals.hellaswag.acc"] == "0.31"
    assert (
        versions[0]["tags"]["lmforge.lineage"] == "Dataset/data > EvalSuite/evals > ModelRelease/rel > PretrainJob/tiny"
    )
    first.close(timeout=60)

    second = serve_release(mlflow, tmp_path, "rel-bbb", "file:///store/rel-bbb/model")
    versions = mlflow.eventually("model", lambda vs: len(vs) == 2, name="tiny-chat")
    assert [v["tags"]["lmforge.run_id"] for v in versions] == ["rel-aaa", "rel-bbb"]
    assert [v["aliases"] for v in versions] == [[], []]
    second.close(timeout=60)
    # the same stage run again (a restarted server) is the same version, not a third
    again = serve_release(mlflow, tmp_path, "rel-bbb", "file:///store/rel-bbb/model")
    again.close(timeout=60)
    assert again.model_version == "2"
    assert len(mlflow.query("model", name="tiny-chat")) == 2


class CountingRest(MlflowRest):
    """The real client, counting `log-batch` requests that carry metrics."""

    def __init__(self, uri: str) -> None:
        super().__init__(uri)
        self.metric_batches = 0

    def call(self, method: str, path: str, body: Any = None, query: Any = None) -> dict[str, Any]:
        if path == "runs/log-batch" and body and body.get("metrics"):
            self.metric_batches += 1
        return super().call(method, path, body, query)


def test_a_stage_reporting_every_step_costs_one_request_per_send_interval_not_one_a_step(
    mlflow: MlflowServer, tmp_path: Path
) -> None:
    s = spec("PretrainJob", "often", StageName.PRETRAIN, "often-444", tmp_path)
    client = CountingRest(mlflow.url)
    tracker = MlflowTracker(mlflow.url, run_info(s), client=client)
    rep = reporter(s, tracker)
    started = time.monotonic()
    for step in range(1, 81):  # 80 steps at ~10 steps/s: ~8 s of training, under 2 send intervals
        rep.progress(step, 80, metrics={"loss": 1.0 / step})
        time.sleep(1 / 10)  # the step's compute (pacing the producer, not waiting for anything)
    seconds = time.monotonic() - started
    rep.result({"model": "file:///nowhere/often"})
    tracker.close(timeout=60)
    run = runs_by_name(mlflow)["often-444"]
    assert [st for st, _ in run["metrics"]["loss"]] == list(range(1, 81))  # every step arrived
    # the first round at once, one per interval, the rest at close(): 3 here (one a second would be ~9)
    assert client.metric_batches <= seconds / SEND_EVERY_S + 2, (client.metric_batches, seconds)


def test_the_server_killed_mid_run_loses_no_progress(mlflow: MlflowServer, tmp_path: Path) -> None:
    s = spec("PretrainJob", "killed", StageName.PRETRAIN, "killed-333", tmp_path)
    tracker = MlflowTracker(mlflow.url, run_info(s))
    rep = reporter(s, tracker)
    for step in range(1, 51):
        rep.progress(step, 100, metrics={"loss": 1.0 / step})
    deadline = time.monotonic() + 30
    while tracker.mlflow_run_id is None and time.monotonic() < deadline:  # eventually: the run exists
        time.sleep(0.1)
    mlflow.stop()
    t0 = time.perf_counter()
    for step in range(51, 101):
        rep.progress(step, 100, metrics={"loss": 1.0 / step})
    assert time.perf_counter() - t0 < 1.0  # the stage did not wait for the dead server
    rep.result({"model": "file:///nowhere/killed"})
    deadline = time.monotonic() + 30
    while tracker.failures == 0 and time.monotonic() < deadline:  # eventually: a send hits the dead server
        time.sleep(0.1)  # (the sender sends once per SEND_EVERY_S, so the server must stay down that long)
    assert tracker.failures > 0
    mlflow.start()
    tracker.close(timeout=60)
    run = runs_by_name(mlflow)["killed-333"]
    assert run["status"] == "FINISHED"
    assert [st for st, _ in run["metrics"]["loss"]] == list(range(1, 101))
    print(f"failures retried: {tracker.failures}", file=sys.stderr)


def test_the_serving_init_container_registers_the_version_in_the_cluster(
    mlflow: MlflowServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lmforge.trainer.serve.prepare import register

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow.url)
    inputs = {
        "ModelRelease/prod": InputArtifacts(kind="ModelRelease", name="prod", artifacts={"model": "s3://b/prod/model"})
    }
    s = spec(
        "ModelRelease",
        "prod",
        StageName.SERVE,
        "prod-ccc",
        tmp_path,
        inputs=inputs,
        body={"modelRef": {"kind": "PretrainJob", "name": "tiny"}},
    )
    register(s)
    versions = mlflow.query("model", name="prod")  # default name: the release's
    assert [v["aliases"] for v in versions] == [[]] and versions[0]["tags"]["lmforge.run_id"] == "prod-ccc"
    assert versions[0]["tags"]["lmforge.model_uri"] == "s3://b/prod/model"


def test_failures_are_a_prometheus_counter_when_the_stage_exports_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    from prometheus_client import REGISTRY

    from lmforge.trainer import progress

    monkeypatch.setattr(progress, "_EXPORTING", True)
    labels = {"backend": "mlflow", "what": "request"}
    before = REGISTRY.get_sample_value("lmforge_tracking_failures_total", labels) or 0.0
    progress.count_tracking_failure("mlflow", "request")
    progress.count_tracking_failure("mlflow", "request")
    assert REGISTRY.get_sample_value("lmforge_tracking_failures_total", labels) == before + 2
