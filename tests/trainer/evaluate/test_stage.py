"""The evaluate stage end to end: spec in, results.json and flat gate metrics out."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lmforge.api.contract import StageSpec
from lmforge.store import ArtifactWriter, LocalStore
from lmforge.trainer.context import StageContext, StageOutcome
from lmforge.trainer.errors import InvalidInput
from lmforge.trainer.evaluate import stage
from lmforge.trainer.progress import ProgressReporter
from lmforge.trainer.shards import FORMAT, INDEX, ShardEntry, ShardIndex

pytestmark = pytest.mark.ml

REPO = Path(__file__).resolve().parents[3]
FACTS = REPO / "examples" / "tiny" / "data" / "facts_mc.jsonl"
PYTHON = sys.executable


def _spec(store: Path, eval_spec: dict[str, Any], inputs: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "stage": "evaluate",
        "store": str(store),
        "output": "evalsuite/tiny-eval",
        "runId": "r1",
        "resource": {
            "apiVersion": "lmforge.io/v1alpha1",
            "kind": "EvalSuite",
            "metadata": {"name": "tiny-eval"},
            "spec": eval_spec,
        },
        "inputs": inputs or {},
    }


def _run_in_process(
    spec: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[StageContext, StageOutcome]:
    monkeypatch.setenv("LMFORGE_WORK_DIR", str(tmp_path / "work"))
    parsed = StageSpec.model_validate(spec)
    ctx = StageContext.from_spec(parsed, ProgressReporter(parsed.stage, parsed.run_id, None, stream=io.StringIO()))
    return ctx, stage.run(ctx)


def test_stage_subprocess_end_to_end_with_a_failing_gate(tiny_model: Path, tmp_path: Path) -> None:
    heldout = tmp_path / "heldout.jsonl"
    heldout.write_text("".join(json.dumps({"text": f"the red cat sees the old dog {i} ."}) + "\n" for i in range(5)))
    code_rows = tmp_path / "code.jsonl"
    code_rows.write_text(
        json.dumps(
            {
                "task_id": "add",
                "prompt": "def add(a, b):\n",
                "entry_point": "add",
                "test": "def check(f):\n    assert f(1, 2) == 3\n",
            }
        )
        + "\n"
    )
    spec = _spec(
        tmp_path / "store",
        {
            "modelRef": {"uri": str(tiny_model)},
            "tasks": [
                {"name": "facts", "type": "multipleChoice", "dataUri": str(FACTS)},
                {"name": "heldout", "type": "perplexity", "dataUri": str(heldout)},
                {"name": "safety", "type": "safety", "limit": 4, "maxNewTokens": 8},
                {"name": "code", "type": "code", "dataUri": str(code_rows), "maxNewTokens": 8, "timeoutSeconds": 5},
            ],
            "thresholds": ["facts.acc >= 0", "heldout.perplexity <= 100000", "safety.refusal_rate >= 0.99"],
            "batchSize": 8,
        },
    )
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LMFORGE_WORK_DIR": str(tmp_path / "work")}
    proc = subprocess.run(
        [PYTHON, "-m", "lmforge.trainer", "evaluate", "--spec", str(spec_file)],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]  # a failed gate is data, not a stage failure
    out = tmp_path / "store" / "evalsuite" / "tiny-eval"
    results = json.loads((out / "results" / "results.json").read_text())
    assert set(results["tasks"]) == {"facts", "heldout", "safety", "code"}
    assert results["passed"] is False
    assert [t["passed"] for t in results["thresholds"]] == [True, True, False]
    assert results["tasks"]["code"]["pass@1"] == 0.0  # a random model writes no working code
    assert results["tasks"]["code"]["sandboxed"] == 1.0
    record = json.loads((out / "result.json").read_text())
    assert record["metrics"]["gate_passed"] == 0.0
    assert record["metrics"]["facts.acc"] == results["tasks"]["facts"]["acc"]
    assert record["metrics"]["safety.jailbreak_refusal_rate"] == results["tasks"]["safety"]["jailbreak_refusal_rate"]
    assert record["artifacts"]["results"].endswith("evalsuite/tiny-eval/results")
    progress = [json.loads(line.split(" ", 1)[1]) for line in proc.stdout.splitlines() if line.startswith("@@lmforge")]
    assert progress[-2]["step"] == progress[-2]["total"] == 60 + 5 + 4 + 1 and progress[-2]["unit"] == "item"


def test_bad_row_fails_before_the_model_loads_naming_task_row_field(tmp_path: Path) -> None:
    rows = tmp_path / "bad.jsonl"
    rows.write_text(
        json.dumps({"question": "q", "choices": ["a", "b"], "answer": 0})
        + "\n"
        + json.dumps({"question": "q", "choices": ["a", "b"], "answer": 5})
        + "\n"
    )
    spec = _spec(
        tmp_path / "store",
        {
            "modelRef": {"uri": str(tmp_path / "nowhere")},
            "tasks": [{"name": "facts", "type": "multipleChoice", "dataUri": str(rows)}],
        },
    )
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec))
    proc = subprocess.run(
        [PYTHON, "-m", "lmforge.trainer", "evaluate", "--spec", str(spec_file)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, "LMFORGE_WORK_DIR": str(tmp_path / "work")},
    )
    assert proc.returncode == 2
    assert f"task facts: row 2 ({rows}): field 'answer': index 5 out of range for 2 choices" in proc.stderr


def test_dataset_validation_split_perplexity_and_baseline_deltas(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalStore(tmp_path / "store")
    rows = np.random.default_rng(1).integers(0, 200, size=(6, 32)).astype(np.uint16)
    shards = ArtifactWriter(store, "dataset/tiny/shards")
    shards.add_bytes("val-0.bin", rows.tobytes())
    shards.add_bytes(
        INDEX,
        ShardIndex(
            format=FORMAT,
            dtype="uint16",
            seq_length=32,
            vocab_size=512,
            eos_id=1,
            validation=[ShardEntry(file="val-0.bin", sequences=6)],
        ).to_bytes(),
    )
    shards.commit("shards")
    model = ArtifactWriter(store, "pretrain/tiny/model")
    model.add_dir(tiny_model)
    model.commit("model", {"dataset": {"shards": store.url("dataset/tiny/shards")}})
    inputs = {
        "PretrainJob/tiny": {
            "kind": "PretrainJob",
            "name": "tiny",
            "artifacts": {"model": store.url("pretrain/tiny/model")},
        },
        "EvalSuite/before": {"kind": "EvalSuite", "name": "before", "metrics": {"heldout.perplexity": 100.0}},
    }
    spec = _spec(
        tmp_path / "store",
        {
            "modelRef": {"kind": "PretrainJob", "name": "tiny"},
            "tasks": [{"name": "heldout", "type": "perplexity", "limit": 4}],
            "thresholds": ["heldout.perplexity <= 100000", "heldout.perplexity <= baseline.heldout.perplexity + 5000"],
            "baselineRef": {"name": "before"},
        },
        inputs,
    )
    ctx, outcome = _run_in_process(spec, tmp_path, monkeypatch)
    results = json.loads((tmp_path / "store" / "evalsuite" / "tiny-eval" / "results" / "results.json").read_text())
    ppl = results["tasks"]["heldout"]["perplexity"]
    assert 50 < ppl < 2000  # a random model over a few hundred tokens
    assert results["baseline"]["deltas"]["heldout.perplexity"] == pytest.approx(ppl - 100.0)
    assert outcome.metrics["gate_passed"] == 1.0 and results["passed"] is True
    # every metric has its interval (bootstrap over the 4 sequences); the per-item scores are kept
    interval = results["intervals"]["heldout"]["perplexity"]
    assert interval["method"] == "bootstrap" and interval["n"] == 4 and interval["low"] <= ppl <= interval["high"]
    assert len(results["items"]["heldout"]["nll"]["values"]) == 4
    # the baseline threshold's bound and the baseline value the operator re-checks it with
    gate = results["thresholds"][1]
    assert gate["passed"] and gate["bound"] == 5100.0 and gate["comparison"]["method"] == "none"
    assert outcome.metrics["baseline.heldout.perplexity"] == 100.0
    assert outcome.artifacts == {"results": ctx.uri("results")}


def test_unready_model_and_unproduced_metric_are_clear_errors(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = _spec(
        tmp_path / "store",
        {
            "modelRef": {"kind": "PretrainJob", "name": "absent"},
            "tasks": [{"name": "safety", "type": "safety", "limit": 1}],
        },
    )
    with pytest.raises(InvalidInput, match=r"input PretrainJob/absent was not resolved \(is it Ready\?\)"):
        _run_in_process(spec, tmp_path, monkeypatch)
    rows = tmp_path / "code.jsonl"
    rows.write_text(json.dumps({"prompt": "def f():\n", "entry_point": "f", "test": "def check(c):\n    c()\n"}) + "\n")
    spec = _spec(
        tmp_path / "store",
        {
            "modelRef": {"uri": str(tiny_model)},
            "tasks": [{"name": "code", "type": "code", "dataUri": str(rows), "maxNewTokens": 4}],
            "thresholds": ["code.pass@10 >= 0.5"],
        },
    )
    with pytest.raises(InvalidInput, match=r"task code produced no metric 'pass@10'"):
        _run_in_process(spec, tmp_path, monkeypatch)


def test_code_fails_closed_without_a_sandbox_and_isolation_none_shows_in_the_results(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lmforge.trainer.evaluate.sandbox import BWRAP_ENV, SandboxUnavailable

    code_rows = tmp_path / "code.jsonl"
    code_rows.write_text(
        json.dumps(
            {
                "task_id": "add",
                "prompt": "def add(a, b):\n",
                "entry_point": "add",
                "test": "def check(f):\n    assert f(1, 2) == 3\n",
            }
        )
        + "\n"
    )
    monkeypatch.setenv(BWRAP_ENV, "/bin/false")
    task = {"name": "code", "type": "code", "dataUri": str(code_rows), "maxNewTokens": 8, "timeoutSeconds": 5}
    with pytest.raises(SandboxUnavailable, match=r"could not isolate programs \(/bin/false exited with status 1\)"):
        _run_in_process(
            _spec(tmp_path / "store", {"modelRef": {"uri": str(tiny_model)}, "tasks": [task]}), tmp_path, monkeypatch
        )
    unconfined = {**task, "isolation": "none"}
    _, outcome = _run_in_process(
        _spec(tmp_path / "store", {"modelRef": {"uri": str(tiny_model)}, "tasks": [unconfined]}), tmp_path, monkeypatch
    )
    results = json.loads((tmp_path / "store" / "evalsuite" / "tiny-eval" / "results" / "results.json").read_text())
    assert results["tasks"]["code"]["sandboxed"] == 0.0 and outcome.metrics["code.sandboxed"] == 0.0
