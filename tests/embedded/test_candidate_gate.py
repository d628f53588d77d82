"""`lmforge run`'s loop on small real stage processes: a release gated on the evaluation of its own
compressed candidate is served only when that candidate passes (compress → evaluate → gate → serve)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from lmforge.api.meta import Phase
from lmforge.operator.embedded.runner import Outcome
from lmforge.operator.local.backend import free_port
from lmforge.store import open_store

from .test_runner import Harness


def _doc(kind: str, name: str, spec: dict[str, object], **annotations: str) -> dict[str, object]:
    return {
        "apiVersion": "lmforge.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": name, "annotations": {"test/behaviour": "ok", **annotations}},
        "spec": spec,
    }


def write_gated_pipeline(directory: Path, port: int, acc: float, threshold: float = 0.5) -> Path:
    """Dataset → PretrainJob → ModelRelease r, gated on EvalSuite e, which evaluates r's candidate and
    scores `mc.acc = acc` (the stage script's `scores` behaviour)."""
    directory.mkdir(parents=True, exist_ok=True)
    docs = [
        _doc(
            "EvalSuite",
            "e",
            {
                "modelRef": {"kind": "ModelRelease", "name": "r"},
                "tasks": [{"name": "mc", "type": "multipleChoice", "dataUri": "mc.jsonl"}],
                "thresholds": [f"mc.acc >= {threshold}"],
            },
            **{"test/behaviour": "scores", "test/metrics": json.dumps({"mc.acc": acc})},
        ),
        _doc(
            "ModelRelease",
            "r",
            {
                "modelRef": {"kind": "PretrainJob", "name": "p"},
                "evalSuiteRef": {"name": "e"},
                "serving": {"port": port},
            },
        ),
        _doc("PretrainJob", "p", {"datasetRef": {"name": "d"}, "training": {"maxSteps": 10}}),
        _doc("Dataset", "d", {"sources": [{"name": "s", "uri": "x.txt", "license": "MIT"}]}),
    ]
    (directory / "pipeline.yaml").write_text(yaml.safe_dump_all(docs))
    return directory


def _evaluated(h: Harness) -> dict[str, str]:
    """What the evaluate stage process was given to evaluate."""
    (run,) = [r for r in h.runner.state.resources["EvalSuite/e"].runs.values() if r.stage == "evaluate"][-1:]
    evaluated: dict[str, str] = json.loads(open_store(h.uri).child(run.output).get_bytes("evaluated.json"))
    return evaluated


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2):
            return True
    except (urllib.error.URLError, OSError):
        return False


def test_a_candidate_failing_its_thresholds_is_not_served(tmp_path: Path) -> None:
    port = free_port()
    h = Harness(tmp_path, write_gated_pipeline(tmp_path / "m", port, acc=0.2), serve=True)
    assert [m.resource.kind for m in h.ordered].index("ModelRelease") < [m.resource.kind for m in h.ordered].index(
        "EvalSuite"
    )
    assert h.runner.run() is Outcome.FAILED
    release = h.runner.state.resources["ModelRelease/r"].status
    ready, gate = release.condition("Ready"), release.condition("GatePassed")
    assert release.phase is Phase.FAILED and ready is not None and ready.status.value == "False"
    assert ready.reason == "GateFailed" and "mc.acc >= 0.5: 0.2 FAILED" in ready.message, ready.message
    assert gate is not None and gate.status.value == "False"
    assert release.endpoint is None and not _answers(port)
    assert _evaluated(h) == {"ModelRelease/r": release.artifacts["model"]}  # its compressed model, not p's
    assert h.runner.state.resources["EvalSuite/e"].status.phase is Phase.SUCCEEDED  # a failed gate is a result
    assert h.starts() == 4  # dataset, pretrain, compress, evaluate — no server
    assert not any(r.stage == "serve" for r in h.runner.state.resources["ModelRelease/r"].runs.values())


def test_a_candidate_that_passes_is_served_and_relaxing_the_gate_serves_without_recompressing(tmp_path: Path) -> None:
    port = free_port()
    failed = Harness(tmp_path, write_gated_pipeline(tmp_path / "m", port, acc=0.2), serve=True)
    assert failed.runner.run() is Outcome.FAILED
    compressed = failed.runner.state.resources["ModelRelease/r"].status.artifacts["model"]

    h = Harness(tmp_path, write_gated_pipeline(tmp_path / "m", port, acc=0.2, threshold=0.1), serve=True)
    try:
        assert h.runner.run() is Outcome.DONE
        release = h.runner.state.resources["ModelRelease/r"].status
        gate = release.condition("GatePassed")
        assert release.phase is Phase.SERVING and release.endpoint == f"http://127.0.0.1:{port}/v1"
        assert gate is not None and gate.status.value == "True" and "on the compressed candidate" in gate.message
        assert release.artifacts["model"] == compressed and _evaluated(h) == {"ModelRelease/r": compressed}
        assert _answers(port)
        assert h.starts() == 6  # + the new evaluation and the server; compression was not redone
    finally:
        h.runner.stop()
    assert not _answers(port)


def test_a_passing_candidate_is_served_on_the_first_run(tmp_path: Path) -> None:
    port = free_port()
    h = Harness(tmp_path, write_gated_pipeline(tmp_path / "m", port, acc=0.9), serve=True)
    try:
        assert h.runner.run() is Outcome.DONE
        release = h.runner.state.resources["ModelRelease/r"].status
        assert release.phase is Phase.SERVING and _answers(port)
        assert h.runner.state.resources["EvalSuite/e"].status.artifacts["evaluatedModel"] == release.artifacts["model"]
    finally:
        h.runner.stop()
