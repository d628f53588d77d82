"""The run loop end to end on small real stage processes: ordering, state, rerun, failure, Ctrl-C,
serving, the lock and the report."""

from __future__ import annotations

import _thread
import json
import threading
import urllib.request
from pathlib import Path

import pytest
import yaml
from support.waiting import eventually

from lmforge.api.meta import Phase
from lmforge.api.validation import dependency_order, validate_paths
from lmforge.cli import main
from lmforge.operator.aliases import AliasBackend
from lmforge.operator.embedded.runner import Outcome, Runner, RunOptions
from lmforge.operator.embedded.state import StateFile, state_dir_for
from lmforge.operator.local import LocalBackend
from lmforge.operator.local.backend import free_port
from lmforge.store import open_store

from .helpers import wrapper_python


def _doc(kind: str, name: str, spec: dict[str, object], behaviour: str = "ok") -> dict[str, object]:
    return {
        "apiVersion": "lmforge.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": name, "annotations": {"test/behaviour": behaviour}},
        "spec": spec,
    }


def write_pipeline(directory: Path, pretrain: str = "ok", port: int = 8000) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    docs = [  # deliberately out of order: the runner orders them by their references
        _doc("ModelRelease", "r", {"modelRef": {"kind": "PretrainJob", "name": "p"}, "serving": {"port": port}}),
        _doc(
            "PretrainJob",
            "p",
            {"datasetRef": {"name": "d"}, "training": {"maxSteps": 10}, "compute": {"backoffLimit": 0}},
            pretrain,
        ),
        _doc("Dataset", "d", {"sources": [{"name": "s", "uri": "x.txt", "license": "MIT"}]}),
    ]
    (directory / "pipeline.yaml").write_text(yaml.safe_dump_all(docs))
    return directory


class Harness:
    def __init__(
        self,
        tmp: Path,
        manifests: Path,
        serve: bool = False,
        env: dict[str, str] | None = None,
        aliases: AliasBackend | None = None,
    ) -> None:
        found, problems = validate_paths([manifests])
        assert not problems
        by_id = {id(m.resource): m for m in found}
        self.ordered = [by_id[id(r)] for r in dependency_order([m.resource for m in found])]
        self.uri = open_store(str(tmp / "store")).uri
        self.state_file = StateFile(state_dir_for(self.uri)[0], self.uri)
        self.backend = LocalBackend(
            open_store(self.uri), self.state_file.dir, python=wrapper_python(tmp), backoff=0.05, env=env
        )
        self.runner = Runner(
            self.ordered, self.uri, self.state_file, self.backend, RunOptions(serve=serve, poll=0.1), aliases=aliases
        )

    def phases(self) -> dict[str, Phase]:
        return self.runner.state.phases()

    def starts(self) -> int:
        """Processes started so far on this store (every attempt writes a `start` line in its log)."""
        logs = (self.state_file.dir / "logs").glob("*.log")
        return sum(p.read_text().count(" start ") for p in logs)


def test_pipeline_runs_in_order_and_a_second_run_does_nothing(tmp_path: Path) -> None:
    manifests = write_pipeline(tmp_path / "m")
    h = Harness(tmp_path, manifests)
    assert [m.resource.kind for m in h.ordered] == ["Dataset", "PretrainJob", "ModelRelease"]
    assert h.runner.run() is Outcome.DONE
    assert set(h.phases().values()) == {Phase.SUCCEEDED}
    release = h.runner.state.resources["ModelRelease/r"].status
    assert release.lineage == ["PretrainJob/p", "Dataset/d"]
    assert "--no-serve" in (release.condition("Ready").message if release.condition("Ready") else "")
    assert h.starts() == 3  # dataset, pretrain, compress

    again = Harness(tmp_path, manifests)
    assert again.runner.run() is Outcome.DONE
    assert again.starts() == 3 and set(again.phases().values()) == {Phase.SUCCEEDED}


def test_failed_stage_stops_its_dependents_and_finished_work_is_kept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    h = Harness(tmp_path, write_pipeline(tmp_path / "m", pretrain="fail"))
    assert h.runner.run() is Outcome.FAILED
    phases = h.phases()
    assert phases == {"Dataset/d": Phase.SUCCEEDED, "PretrainJob/p": Phase.FAILED, "ModelRelease/r": Phase.FAILED}
    ready = h.runner.state.resources["PretrainJob/p"].status.condition("Ready")
    assert ready is not None and "loss is NaN for 5 steps" in ready.message
    release = h.runner.state.resources["ModelRelease/r"].status.condition("Ready")
    assert release is not None and release.reason == "InputFailed"

    fixed = Harness(tmp_path, write_pipeline(tmp_path / "m", pretrain="ok"))
    assert fixed.runner.run() is Outcome.DONE
    assert fixed.starts() == 4  # dataset once, pretrain twice, compress once

    assert main(["status", "--store", str(tmp_path / "store")]) == 0
    out = capsys.readouterr().out
    assert "PretrainJob/p" in out and "Succeeded" in out and "no `lmforge run` is active" in out
    assert main(["logs", "p", "--store", str(tmp_path / "store")]) == 0
    assert "-m lmforge.trainer pretrain --spec" in capsys.readouterr().out


def test_ctrl_c_stops_the_running_stage_and_the_next_run_resumes_it(tmp_path: Path) -> None:
    h = Harness(tmp_path, write_pipeline(tmp_path / "m", pretrain="sleep"))

    def interrupt_once_training() -> None:
        try:
            eventually(
                lambda: (
                    h.runner.state.resources["PretrainJob/p"].status.phase is Phase.RUNNING
                    and h.runner.state.resources["PretrainJob/p"].status.progress
                ),
                timeout=120,
            )
        finally:  # interrupt even when the wait timed out: the assertions below then fail, not hang
            _thread.interrupt_main()

    threading.Thread(target=interrupt_once_training, daemon=True).start()
    assert h.runner.run() is Outcome.INTERRUPTED
    assert not h.backend.active()
    status = h.state_file.load().resources["PretrainJob/p"].status
    assert status.phase is Phase.PENDING and "interrupted" in status.conditions[0].message
    run = next(iter(h.runner.state.resources["PretrainJob/p"].runs.values()))
    assert open_store(h.uri).child(run.output).exists("interrupted")  # the stage saw SIGINT


def test_release_serves_until_stopped(tmp_path: Path) -> None:
    port = free_port()
    h = Harness(tmp_path, write_pipeline(tmp_path / "m", port=port), serve=True)
    assert h.runner.run() is Outcome.DONE
    release = h.runner.state.resources["ModelRelease/r"].status
    assert release.phase is Phase.SERVING and release.endpoint == f"http://127.0.0.1:{port}/v1"
    with urllib.request.urlopen(f"{release.endpoint}/models", timeout=5) as resp:
        assert json.loads(resp.read())["data"][0]["id"] == "tiny"
    h.runner.stop()
    assert not h.backend.active()
    assert h.state_file.load().resources["ModelRelease/r"].status.phase is Phase.SUCCEEDED


def test_report_has_the_loss_curve_and_lineage(tmp_path: Path) -> None:
    from lmforge.operator.embedded.report import write_report

    h = Harness(tmp_path, write_pipeline(tmp_path / "m"))
    assert h.runner.run() is Outcome.DONE
    uri = write_report(h.runner.state, h.state_file)
    store = open_store(h.uri)
    assert uri.endswith("report.html") and store.exists("report.md")
    png = store.get_bytes("report/loss-p.png")
    assert png.startswith(b"\x89PNG")
    md = store.get_bytes("report.md").decode()
    assert "![PretrainJob/p loss curve](report/loss-p.png)" in md
    assert "Dataset/d → PretrainJob/p" in md and "s (x.txt, MIT)" in md
    assert "report/loss-p.png" in store.get_bytes("report.html").decode()


def test_second_run_on_a_busy_store_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifests = write_pipeline(tmp_path / "m")
    h = Harness(tmp_path, manifests)
    h.state_file.acquire()
    try:
        assert main(["run", str(manifests), "--store", str(tmp_path / "store"), "-q"]) == 3
    finally:
        h.state_file.release()
    err = capsys.readouterr().err
    assert "another `lmforge run` (" in err and f'"pid": {__import__("os").getpid()}' in err


def test_bad_manifests_are_refused_before_anything_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "m"
    d.mkdir()
    (d / "p.yaml").write_text(
        yaml.safe_dump(_doc("PretrainJob", "p", {"datasetRef": {"name": "nope"}, "training": {"maxSteps": 1}}))
    )
    assert main(["run", str(d), "--store", str(tmp_path / "store")]) == 1
    assert "references Dataset/nope, which is not defined" in capsys.readouterr().err
    assert not (tmp_path / "store").exists()
