"""SIGTERM (a pod evicted, `lmforge run` stopping a stage): the stage finishes its step, saves a
checkpoint at that step — not only at the last `checkpoint.everySteps` multiple — and exits with a
retryable failure; the retry resumes from that checkpoint."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lmforge.api.contract import (
    ERROR_PREFIX,
    EXIT_FAILED,
    RECORD_PREFIX,
    ProgressRecord,
    StageName,
    stage_command,
)
from lmforge.store import read_manifest

from .conftest import REPO, World, pretrain_resource, run_in_process, stage_spec

pytestmark = pytest.mark.ml

CKPTS = "runs/pretrain/checkpoints"
EVERY = 1000  # a periodic checkpoint never happens during the test: any checkpoint is the SIGTERM one


def _lines(stream: object, out: queue.Queue[str | None]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        out.put(line)
    out.put(None)


def test_sigterm_checkpoints_the_current_step_and_the_retry_resumes_there(world: World, tmp_path: Path) -> None:
    resource = pretrain_resource(
        training={"maxSteps": 2000}, checkpoint={"everySteps": EVERY}, validation={"everySteps": EVERY, "batches": 1}
    )
    spec = stage_spec(world, resource)
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec.wire()))
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
        "LMFORGE_WORK_DIR": str(tmp_path / "work"),
    }
    proc = subprocess.Popen(
        stage_command(StageName.PRETRAIN, str(path), sys.executable),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_lines, args=(proc.stdout, lines), daemon=True).start()
    stderr: list[str] = []
    threading.Thread(target=lambda: stderr.extend(proc.stderr or []), daemon=True).start()
    try:
        deadline = time.monotonic() + 120
        while True:  # until the first training step's record, then SIGTERM
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            assert line is not None, "".join(stderr)
            if (
                line.startswith(RECORD_PREFIX)
                and "loss" in ProgressRecord.model_validate_json(line[len(RECORD_PREFIX) :]).metrics
            ):
                proc.send_signal(signal.SIGTERM)
                break
        assert proc.wait(timeout=120) == EXIT_FAILED
    finally:
        if proc.poll() is None:
            proc.kill()
    records = []
    while (line := lines.get(timeout=10)) is not None:
        if line.startswith(RECORD_PREFIX):
            records.append(ProgressRecord.model_validate_json(line[len(RECORD_PREFIX) :]))

    latest = json.loads(world.store.get_bytes(f"{CKPTS}/latest"))
    step = latest["step"]
    assert 1 <= step < 100 and step % EVERY != 0  # saved at the step it was stopped at
    assert read_manifest(world.store, f"{CKPTS}/step-{step}") is not None
    message = f"stopped by SIGTERM after step {step} of 2000; saved checkpoint step-{step}; a retry resumes from it"
    assert records[-1].type.value == "error" and records[-1].retryable is True
    assert records[-1].message == message
    assert stderr[-1].strip() == ERROR_PREFIX + message

    # The retry (same job, same output prefix) continues at that step; a short run to keep the test quick.
    short = pretrain_resource(
        training={"maxSteps": step + 3},
        checkpoint={"everySteps": EVERY},
        validation={"everySteps": EVERY, "batches": 1},
    )
    again = run_in_process(stage_spec(world, short))
    assert again.outcome.resumed_from == step
    assert sorted(again.outcome.losses) == [step + 1, step + 2, step + 3]
    assert "model" in again.artifacts
