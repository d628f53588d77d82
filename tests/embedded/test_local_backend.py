"""The local backend against real subprocesses that follow the stage contract (`stagescript.py`)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.waiting import eventually

from lmforge.api.contract import StageName
from lmforge.operator.local import LocalBackend
from lmforge.operator.local.backend import free_port
from lmforge.operator.reconcile.types import ObservedRun, RunState, StageRun
from lmforge.store import open_store

from .helpers import pretrain, resource, run_of, wrapper_python


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[LocalBackend]:
    store = open_store(str(tmp_path / "store"))
    b = LocalBackend(store, tmp_path / "state", cores=2, python=wrapper_python(tmp_path), backoff=0.05)
    yield b
    b.stop_all(grace=2.0)


def _finished(backend: LocalBackend, run: StageRun) -> ObservedRun:
    def done() -> ObservedRun | None:
        seen = backend.observe(run.name, run.stage, run.spec.output)
        return seen if seen and seen.state in (RunState.SUCCEEDED, RunState.FAILED) else None

    return eventually(done, tick=backend.tick)


def test_successful_run_reports_progress_result_log_and_records(backend: LocalBackend, tmp_path: Path) -> None:
    run = run_of(pretrain("ok"), str(tmp_path / "store"))
    backend.ensure(run)
    seen = _finished(backend, run)
    assert seen.state is RunState.SUCCEEDED and seen.attempts == 1
    assert seen.result is not None and seen.result.metrics == {"loss": 1.0}
    assert seen.progress is not None and (seen.progress.step, seen.progress.total) == (3, 3)
    log = backend.log_path(run.name).read_text()
    assert "threads=2 worker=0" in log and "-m lmforge.trainer pretrain --spec" in log
    records = [json.loads(line) for line in backend.records_path(run.name).read_text().splitlines()]
    assert [r["metrics"]["loss"] for r in records if r["type"] == "progress"] == [3.0, 2.0, 1.0]
    assert json.loads(backend.spec_path(run.name).read_text())["runId"] == run.run_id


def test_finished_run_is_recognised_from_the_store_by_a_new_backend(backend: LocalBackend, tmp_path: Path) -> None:
    run = run_of(pretrain("done"), str(tmp_path / "store"))
    backend.ensure(run)
    _finished(backend, run)
    fresh = LocalBackend(open_store(str(tmp_path / "store")), tmp_path / "state2", python="/nonexistent")
    seen = fresh.observe(run.name, run.stage, run.spec.output)
    assert seen is not None and seen.state is RunState.SUCCEEDED and seen.result is not None
    assert fresh.observe("other", StageName.PRETRAIN, "pretrainjobs/other/x") is None


def test_failure_is_retried_up_to_backoff_limit_with_the_error_line(backend: LocalBackend, tmp_path: Path) -> None:
    run = run_of(pretrain("fail", "fail", backoffLimit=2), str(tmp_path / "store"))
    backend.ensure(run)
    seen = _finished(backend, run)
    assert seen.state is RunState.FAILED and seen.attempts == 3
    assert seen.message is not None and seen.message.startswith("loss is NaN for 5 steps")
    assert backend.log_path(run.name).read_text().count("ended: status 1") == 3


def test_invalid_input_is_not_retried(backend: LocalBackend, tmp_path: Path) -> None:
    run = run_of(pretrain("invalid", "invalid", backoffLimit=3), str(tmp_path / "store"))
    backend.ensure(run)
    seen = _finished(backend, run)
    assert (seen.state, seen.attempts, seen.retryable) == (RunState.FAILED, 1, False)
    assert seen.message == "spec.data.uri: no such file"


def test_a_retry_succeeds(backend: LocalBackend, tmp_path: Path) -> None:
    run = run_of(pretrain("flaky", "fail-once", backoffLimit=1), str(tmp_path / "store"))
    backend.ensure(run)
    seen = _finished(backend, run)
    assert (seen.state, seen.attempts) == (RunState.SUCCEEDED, 2)


def test_stop_sends_sigint_so_the_stage_exits_cleanly(backend: LocalBackend, tmp_path: Path) -> None:
    run = run_of(pretrain("sleeper", "sleep"), str(tmp_path / "store"))
    backend.ensure(run)
    eventually(lambda: (s := backend.observe(run.name, run.stage, run.spec.output)) and s.progress, tick=backend.tick)
    assert backend.stop_all(grace=10.0) == [run.name]
    out = open_store(str(tmp_path / "store")).child(run.spec.output)
    assert out.exists("interrupted")
    assert not backend.active()


def test_one_batch_stage_at_a_time(backend: LocalBackend, tmp_path: Path) -> None:
    first, second = (run_of(pretrain(n, "sleep"), str(tmp_path / "store")) for n in ("one", "two"))
    backend.ensure(first)
    backend.ensure(second)
    eventually(
        lambda: backend.observe(first.name, first.stage, first.spec.output).state is RunState.RUNNING, tick=backend.tick
    )
    seen = backend.observe(second.name, second.stage, second.spec.output)
    assert seen is not None and (seen.state, seen.message) == (RunState.PENDING, "queued")
    assert backend.busy() == 1


def test_indexed_workers_each_get_their_index(backend: LocalBackend, tmp_path: Path) -> None:
    ds = resource(
        "Dataset", "d", {"sources": [{"name": "s", "uri": "x.txt", "license": "MIT"}], "workers": 3}, "workers"
    )
    run = run_of(ds, str(tmp_path / "store"))
    backend.ensure(run)
    assert _finished(backend, run).state is RunState.SUCCEEDED
    out = open_store(str(tmp_path / "store")).child(run.spec.output)
    assert [k for k in out.list() if k.startswith("worker-")] == ["worker-0", "worker-1", "worker-2"]


def test_serving_is_ready_when_the_endpoint_answers(backend: LocalBackend, tmp_path: Path) -> None:
    port = free_port()
    release = resource("ModelRelease", "r", {"modelRef": {"uri": "m"}, "serving": {"port": port}}, "serve")
    run = run_of(release, str(tmp_path / "store"), stage_index=1)
    assert run.stage is StageName.SERVE and run.long_running
    backend.ensure(run)
    seen = eventually(
        lambda: (s := backend.observe(run.name, run.stage, run.spec.output)) and s.state is RunState.READY and s,
        tick=backend.tick,
    )
    assert seen.endpoint == f"http://127.0.0.1:{port}/v1"


def test_processes_are_capped_by_the_cores(tmp_path: Path) -> None:
    backend = LocalBackend(open_store(str(tmp_path)), tmp_path, cores=2, python="py")
    run = run_of(pretrain("big", processes=4), str(tmp_path))
    [cmd] = backend.commands(run, "spec.json")
    assert cmd.argv[:3] == ["py", "-m", "torch.distributed.run"] and "--nproc-per-node=2" in cmd.argv
    assert cmd.argv[-4:] == ["lmforge.trainer", "pretrain", "--spec", "spec.json"]
    assert cmd.env["OMP_NUM_THREADS"] == "1"
    [single] = backend.commands(run_of(pretrain("small", threads=3), str(tmp_path)), "s.json")
    assert single.argv == ["py", "-m", "lmforge.trainer", "pretrain", "--spec", "s.json"]
    assert single.env["OMP_NUM_THREADS"] == "3"
