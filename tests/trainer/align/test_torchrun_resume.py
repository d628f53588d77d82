"""Resume under torchrun: two CPU processes (gloo) share one work folder; the run killed after its first
checkpoint is restarted and continues from that checkpoint (the node's first process downloads it, the
other waits) and publishes one model."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from support.waiting import eventually

from lmforge.api.contract import RESULT_KEY, parse_record, record_from_json
from lmforge.store import open_store
from lmforge.trainer.checkpoints import CheckpointLog

from .conftest import sft_rows, write_jsonl
from .test_cli_resume import stage_spec

pytestmark = [pytest.mark.ml, pytest.mark.slow]


def torchrun(spec: Path, tmp_path: Path) -> subprocess.Popen[str]:
    """`torchrun --standalone` (a free rendezvous port) with two ranks."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "LMFORGE_WORK_DIR": str(tmp_path / "work"),
        "LMFORGE_CACHE": str(tmp_path / "cache"),
        "OMP_NUM_THREADS": "1",
    }
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        "-m",
        "lmforge.trainer",
        "align",
        "--spec",
        str(spec),
    ]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def kill_tree(proc: subprocess.Popen[str]) -> None:
    """SIGKILL the ranks, then torchrun (it starts each rank in a session of its own, so a signal to
    torchrun's process group would leave them running)."""
    import psutil

    ranks = psutil.Process(proc.pid).children(recursive=True)
    for p in ranks:
        p.send_signal(signal.SIGKILL)
    proc.send_signal(signal.SIGKILL)
    psutil.wait_procs(ranks, timeout=30)


def test_two_process_sft_resumes_after_kill(tiny_model: Path, tmp_path: Path) -> None:
    write_jsonl(tmp_path / "sft.jsonl", sft_rows(64))
    job = {
        "modelRef": {"uri": str(tiny_model)},
        "method": "sft",
        "data": {"uri": "sft.jsonl", "validationFraction": 0},
        "training": {"maxSteps": 60, "microBatchSize": 4, "lr": 1e-3, "maxLength": 64},
        "checkpoint": {"everySteps": 5, "keepLast": 2},
    }
    spec = stage_spec(tmp_path, job)
    output = open_store(str(tmp_path / "store")).child("runs/sft")
    first = torchrun(spec, tmp_path)
    try:
        eventually(
            lambda: output.exists("checkpoints/latest") or first.poll() is not None, timeout=120, what="a checkpoint"
        )
        assert first.poll() is None, first.communicate()[1][-3000:]
    finally:
        kill_tree(first)
        first.communicate()
    assert not output.exists(RESULT_KEY)
    pointer = CheckpointLog(output, 2).pointer()
    assert pointer is not None
    killed_at = int(pointer["step"])
    ckpt = f"checkpoints/{pointer['tag']}"
    # Both ranks' RNG states made it into the checkpoint (rank 0 uploads after the barrier).
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= {k.rsplit("/", 1)[-1] for k in output.list(ckpt)}

    second = torchrun(spec, tmp_path)
    stdout, stderr = second.communicate(timeout=180)
    assert second.returncode == 0, stderr[-3000:]
    assert stdout.count(f"resuming from checkpoint at step {killed_at}") == 2  # each rank resumed
    result = record_from_json(output.get_bytes(RESULT_KEY))
    assert result is not None and result.metrics["resumed_from_step"] == killed_at
    assert set(result.artifacts) == {"model"} and result.artifacts["model"].endswith("runs/sft/model")
    published = {
        k.rsplit("/", 1)[0] for k in output.list("") if k.endswith("MANIFEST.json") and not k.startswith("checkpoints/")
    }
    assert published == {"model"}  # one model artifact (checkpoints live under checkpoints/)
    assert (CheckpointLog(output, 2).pointer() or {}).get("tag") == "step-60"
    records = [r for r in map(parse_record, stdout.splitlines()) if r is not None]
    steps = [r.step for r in records if r.step]
    assert steps and min(steps) > killed_at and max(steps) == 60  # the second run did not start over
