"""End to end through `python -m lmforge.trainer align --spec FILE`: a killed run resumes from the
store's latest checkpoint; a bad row fails with exit 2 and names the row."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.waiting import eventually

from lmforge.api.contract import ERROR_PREFIX, EXIT_INVALID_SPEC, RESULT_KEY, record_from_json
from lmforge.store import open_store
from lmforge.trainer.checkpoints import CheckpointLog

from .conftest import sft_rows, write_jsonl

pytestmark = [pytest.mark.ml, pytest.mark.slow]


def stage_spec(tmp_path: Path, job: dict[str, Any]) -> Path:
    spec = {
        "stage": "align",
        "store": str(tmp_path / "store"),
        "output": "runs/sft",
        "runId": "sft-1",
        "baseDir": str(tmp_path),
        "resource": {
            "apiVersion": "lmforge.io/v1alpha1",
            "kind": "AlignmentJob",
            "metadata": {"name": "sft"},
            "spec": job,
        },
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def start(spec: Path, tmp_path: Path) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "LMFORGE_WORK_DIR": str(tmp_path / "work"),
        "LMFORGE_CACHE": str(tmp_path / "cache"),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "lmforge.trainer", "align", "--spec", str(spec)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_killed_run_resumes_from_latest_checkpoint(tiny_model: Path, tmp_path: Path) -> None:
    write_jsonl(tmp_path / "sft.jsonl", sft_rows(64))
    job = {
        "modelRef": {"uri": str(tiny_model)},
        "method": "sft",
        "data": {"uri": "sft.jsonl"},
        "training": {"maxSteps": 40, "microBatchSize": 4, "lr": 1e-3, "maxLength": 64},
        "checkpoint": {"everySteps": 4, "keepLast": 2},
    }
    spec = stage_spec(tmp_path, job)
    output = open_store(str(tmp_path / "store")).child("runs/sft")
    first = start(spec, tmp_path)
    try:
        eventually(
            lambda: output.exists("checkpoints/latest") or first.poll() is not None, timeout=180, what="a checkpoint"
        )
        assert first.poll() is None, first.communicate()[1][-2000:]
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert not output.exists(RESULT_KEY)
    second = start(spec, tmp_path)
    stdout, stderr = second.communicate(timeout=300)
    assert second.returncode == 0, stderr[-3000:]
    assert "resuming from checkpoint at step" in stdout
    result = record_from_json(output.get_bytes(RESULT_KEY))
    assert result is not None and result.metrics["resumed_from_step"] >= 4
    assert result.artifacts["model"].endswith("runs/sft/model")
    kept = {k.split("/")[1] for k in output.list("checkpoints") if k.count("/") >= 2}
    assert len(kept) <= 2 and (CheckpointLog(output, 2).pointer() or {}).get("tag") == "step-40"
    steps = [json.loads(line.split(" ", 1)[1])["step"] for line in stdout.splitlines() if line.startswith("@@lmforge")]
    assert min(s for s in steps if s > 0) > 4  # the second run did not start over


def test_bad_row_fails_with_its_row_number(tiny_model: Path, tmp_path: Path) -> None:
    write_jsonl(
        tmp_path / "pref.jsonl", [{"prompt": "p", "chosen": "c", "rejected": "r"}, {"prompt": "p", "chosen": "c"}]
    )
    spec = stage_spec(tmp_path, {"modelRef": {"uri": str(tiny_model)}, "method": "dpo", "data": {"uri": "pref.jsonl"}})
    proc = start(spec, tmp_path)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_INVALID_SPEC
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(ERROR_PREFIX) and "pref.jsonl:2: missing field 'rejected'" in last
