"""Blue-green under `lmforge run`'s loop, with real server processes (the stage script's HTTP server,
which names the model it serves) and a real smoke evaluate stage that asks the new server which model
it serves: a changed release starts beside the serving one, and the old one stops only after the new
one passed its smoke evaluation; a new version that fails it is stopped and the old keeps serving."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml
from support.waiting import eventually

from lmforge.api.meta import Phase, RolloutState
from lmforge.api.validation import dependency_order, validate_paths
from lmforge.operator.embedded.runner import Outcome
from lmforge.operator.local.backend import free_port
from lmforge.operator.reconcile import Event

from .test_runner import Harness


def _doc(kind: str, name: str, spec: dict[str, object], **annotations: str) -> dict[str, object]:
    return {
        "apiVersion": "lmforge.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": name, "annotations": {"test/behaviour": "ok", **annotations}},
        "spec": spec,
    }


def write(directory: Path, port: int, answer: str, max_len: int) -> Path:
    """A release whose server names `answer` as its model (a changed `maxModelLen` makes a new version)
    and its smoke suite, which passes only on a server answering "good"."""
    directory.mkdir(parents=True, exist_ok=True)
    docs = [
        _doc("Dataset", "d", {"sources": [{"name": "s", "uri": "x.txt", "license": "MIT"}]}),
        _doc("PretrainJob", "p", {"datasetRef": {"name": "d"}, "training": {"maxSteps": 10}}),
        _doc(
            "ModelRelease",
            "r",
            {
                "modelRef": {"kind": "PretrainJob", "name": "p"},
                "serving": {"port": port, "maxModelLen": max_len, "smokeEvalSuiteRef": {"name": "smoke"}},
            },
            **{"test/answer": answer},
        ),
        _doc(
            "EvalSuite",
            "smoke",
            {
                "endpoint": {"releaseRef": {"name": "r"}},
                "tasks": [{"name": "smoke", "type": "generation", "dataUri": "s.jsonl"}],
                "thresholds": ["smoke.exact_match >= 1"],
            },
            **{"test/behaviour": "probe"},
        ),
    ]
    (directory / "pipeline.yaml").write_text(yaml.safe_dump_all(docs))
    return directory


def served(endpoint: str | None) -> str | None:
    """The model the server at `endpoint` names, or None when nothing answers there."""
    try:
        with urllib.request.urlopen(f"{endpoint}/models", timeout=2) as resp:
            name: str = json.loads(resp.read())["data"][0]["id"]
            return name
    except (urllib.error.URLError, OSError, ValueError):
        return None


def reload(h: Harness, manifests: Path) -> None:
    found, problems = validate_paths([manifests])
    assert not problems
    by_id = {id(m.resource): m for m in found}
    h.runner.reload([by_id[id(r)] for r in dependency_order([m.resource for m in found])])


def test_a_changed_release_switches_only_after_its_smoke_evaluation_and_a_bad_one_is_rolled_back(
    tmp_path: Path,
) -> None:
    port = free_port()
    manifests = write(tmp_path / "m", port, "good", 64)
    h = Harness(tmp_path, manifests, serve=True)
    events: list[tuple[str, Event]] = []
    h.runner.on_event = lambda k, e: events.append((k, e))
    try:
        assert h.runner.run() is Outcome.DONE
        v1 = h.runner.state.resources["ModelRelease/r"].status
        url1 = v1.endpoint
        assert url1 == f"http://127.0.0.1:{port}/v1" and served(url1) == "good" and v1.rollout is None
        rid1 = v1.run_id

        # A bad new version: it starts beside v1 on another port, fails its smoke evaluation, is stopped.
        reload(h, write(tmp_path / "m", port, "garbage", 96))

        def status_of(state: RolloutState) -> bool:
            h.runner.step()
            rollout = h.runner.state.resources["ModelRelease/r"].status.rollout
            if rollout is not None and rollout.state is state and rollout.candidate != rid1:
                return True
            assert served(url1) == "good"  # until then v1 answers throughout
            return False

        eventually(lambda: status_of(RolloutState.ROLLED_BACK), timeout=60, interval=0.2)
        status = h.runner.state.resources["ModelRelease/r"].status
        rollout = status.rollout
        assert rollout is not None and rollout.stable == rid1 and rollout.candidate != rid1
        url2 = rollout.candidate_endpoint
        assert url2 is not None and url2 != url1
        ready = status.condition("Ready")
        assert status.phase is Phase.SERVING and status.endpoint == url1
        assert ready is not None and ready.status.value == "True" and ready.reason == "RolledBack"
        assert f"keeps serving at {url1}" in ready.message and "smoke.exact_match >= 1" in ready.message
        eventually(lambda: served(url2) is None, timeout=30)  # the bad server was stopped
        for _ in range(3):  # and is not started again
            h.runner.step()
        assert served(url2) is None and served(url1) == "good"
        smoke_said = [e.message for k, e in events if e.reason == "SmokeTesting"]
        assert smoke_said and url1 in smoke_said[-1] and url2 in smoke_said[-1]  # which URL serves which version
        assert [e.type for k, e in events if e.reason == "RolledBack"] == ["Warning"]

        # A good new version: promoted once its smoke evaluation passed; then v1 stops.
        reload(h, write(tmp_path / "m", port, "good", 128))
        eventually(lambda: status_of(RolloutState.PROMOTED), timeout=60, interval=0.2)
        status = h.runner.state.resources["ModelRelease/r"].status
        rollout = status.rollout
        assert rollout is not None and rollout.stable == rid1 and status.endpoint == rollout.candidate_endpoint
        url3 = status.endpoint
        assert url3 not in (url1, None) and served(url3) == "good"
        eventually(lambda: served(url1) is None, timeout=30)
        promoted = [e.message for k, e in events if e.reason == "Promoted"]
        assert len(promoted) == 1 and url3 in promoted[0] and f"{rid1} at {url1} stopped" in promoted[0]
        smoke = h.runner.state.resources["EvalSuite/smoke"].status
        assert smoke.artifacts["evaluatedEndpoint"] == url3
        assert h.runner.state.resources["ModelRelease/r"].status.phase is Phase.SERVING
    finally:
        h.runner.stop()


class _Said:
    """A view that keeps what it was told."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, bool]] = []

    def say(self, text: str, error: bool = False) -> None:
        self.lines.append((text, error))


def test_lmforge_run_picks_up_changed_manifests_while_serving_and_ignores_invalid_ones(tmp_path: Path) -> None:
    from lmforge.operator.embedded.cli import manifest_watch

    manifests = write(tmp_path / "m", 8000, "good", 64)
    said = _Said()
    changed = manifest_watch([str(manifests)], said)  # type: ignore[arg-type]
    assert changed() is None
    path = manifests / "pipeline.yaml"
    path.write_text(path.read_text().replace("maxModelLen: 64", "maxModelLen: 96"))
    os.utime(path, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))  # a later mtime even on a coarse clock
    fresh = changed()
    assert fresh is not None and [m.resource.kind for m in fresh].index("ModelRelease") < [
        m.resource.kind for m in fresh
    ].index("EvalSuite")
    release = next(m.resource for m in fresh if m.resource.kind == "ModelRelease")
    assert release.spec.serving.max_model_len == 96
    assert changed() is None  # nothing new since

    path.write_text(path.read_text().replace("maxModelLen: 96", "maxModelLen: lots"))
    os.utime(path, ns=(time.time_ns() + 2 * 10**9, time.time_ns() + 2 * 10**9))
    assert changed() is None
    errors = [t for t, e in said.lines if e]
    assert errors and "spec.serving.maxModelLen" in errors[0] and "what runs keeps running" in errors[0]
