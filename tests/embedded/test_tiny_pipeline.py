"""`lmforge run` on the real stages: the CI variant of examples/tiny (tests/embedded/tiny-ci) from raw
text to a served model, and a run killed during pretraining that resumes from its checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.waiting import eventually

from lmforge.operator.local.backend import free_port
from lmforge.store import open_store

pytestmark = [pytest.mark.slow, pytest.mark.ml]

CI = Path(__file__).with_name("tiny-ci")
DATA = Path(__file__).resolve().parents[2] / "examples" / "tiny" / "data"
LMFORGE = [sys.executable, "-m", "lmforge.cli"]


def manifests(tmp: Path, names: list[str] | None = None, port: int = 8000) -> Path:
    """The CI manifests with absolute data paths and a free serving port."""
    out = tmp / "manifests"
    out.mkdir()
    for path in sorted(CI.glob("*.yaml")):
        if names is None or path.name in names:
            text = path.read_text().replace("../../../examples/tiny/data", str(DATA))
            text = text.replace("  serving:\n", f"  serving:\n    port: {port}\n")
            (out / path.name).write_text(text)
    return out


def start(args: list[str], cwd: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LMFORGE_WORK_DIR": str(cwd / "work")}
    return subprocess.Popen(
        [*LMFORGE, "run", *args, "-o", "json"],
        cwd=cwd,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def finish(proc: subprocess.Popen[str], timeout: float) -> int:
    """Wait for `lmforge run` to end while reading its output: `-o json` prints a line per record,
    and the Dataset and PretrainJob of tiny-ci printed 68 KB, more than a 64 KiB pipe holds: a runner
    nobody reads from then blocks on its next line and never ends (a bare `wait` hung this way for
    1200 s in a CI rehearsal). On timeout its session is killed and the end of its output shown."""
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"lmforge run did not end within {timeout:.0f} s; its output ended:\n{out[-3000:]}")
    if proc.returncode != 0:
        print(out[-3000:])
    return proc.returncode


def lines(proc: subprocess.Popen[str]) -> Iterator[dict[str, Any]]:
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("{"):
            yield json.loads(line)


def status(store: Path) -> dict[str, Any]:
    out = subprocess.run(
        [*LMFORGE, "status", "--store", str(store), "-o", "json"], capture_output=True, text=True, check=True
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def starts(store: Path) -> int:
    return sum(p.read_text().count(" start ") for p in (store / ".lmforge-state" / "logs").glob("*.log"))


def test_tiny_pipeline_from_text_to_a_served_model(tmp_path: Path) -> None:
    port = free_port()
    store = tmp_path / "store"
    began = time.monotonic()
    proc = start([str(manifests(tmp_path, port=port)), "--store", str(store)], tmp_path)
    try:
        seen: list[dict[str, Any]] = []
        for obj in lines(proc):
            seen.append(obj)
            if obj["type"] == "message" and obj["message"] == "serving until Ctrl-C":
                break
        else:
            pytest.fail(f"lmforge run ended with {proc.wait()} before serving: {seen[-5:]}")
        wall = time.monotonic() - began
        print(f"tiny-ci pipeline to serving: {wall:.0f} s")
        phases = {k: v["phase"] for k, v in status(store)["resources"].items()}
        assert phases == {
            "Dataset/tiny-corpus": "Succeeded",
            "PretrainJob/tiny-base": "Succeeded",
            "AlignmentJob/tiny-sft": "Succeeded",
            "AlignmentJob/tiny-dpo": "Succeeded",
            "EvalSuite/tiny-eval": "Succeeded",
            "ModelRelease/tiny-release": "Serving",
        }
        assert (store / "report.html").exists() and (store / "report.md").exists()
        for name in ("tiny-base", "tiny-sft", "tiny-dpo"):
            assert (store / "report" / f"loss-{name}.png").read_bytes().startswith(b"\x89PNG")
        endpoint = status(store)["resources"]["ModelRelease/tiny-release"]["endpoint"]
        body = json.dumps(
            {
                "model": "tiny",
                "messages": [{"role": "user", "content": "What is a cat?"}],
                "max_tokens": 16,
                "temperature": 0,
            }
        ).encode()
        req = urllib.request.Request(
            f"{endpoint}/chat/completions", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=60) as resp:
            answer = json.loads(resp.read())["choices"][0]["message"]["content"]
        assert isinstance(answer, str) and answer.strip()
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGINT)  # Ctrl-C: stops the server
        code = finish(proc, timeout=300)  # reading its output: a runner blocked on a full pipe cannot stop
    assert code == 0
    before = starts(store)
    again = start([str(tmp_path / "manifests"), "--store", str(store), "--no-serve"], tmp_path)
    assert finish(again, timeout=300) == 0
    assert starts(store) == before  # nothing was run again


def test_run_killed_during_pretraining_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    store = tmp_path / "store"
    names = ["01-dataset.yaml", "02-pretrain.yaml"]
    proc = start([str(manifests(tmp_path, names)), "--store", str(store)], tmp_path)

    def checkpoint() -> str | None:
        found = [k for k in open_store(str(store)).list("pretrainjobs") if k.endswith("checkpoints/latest")]
        return found[0] if found else None

    try:
        latest = eventually(checkpoint, timeout=900)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)  # a crash, not a clean stop
        proc.wait()
    records = next((store / ".lmforge-state" / "records").glob("tiny-base-pretrain-*.jsonl"))
    steps_before = [json.loads(x)["step"] for x in records.read_text().splitlines()]
    assert max(steps_before) < 60, "the kill came too late to test a resume"

    again = start([str(tmp_path / "manifests"), "--store", str(store)], tmp_path)
    assert finish(again, timeout=900) == 0
    after = [json.loads(x) for x in records.read_text().splitlines()][len(steps_before) :]
    resumed = [r for r in after if (r.get("message") or "").startswith("resumed from checkpoint step-")]
    assert resumed, "the rerun did not resume from the checkpoint"
    first_step = resumed[0]["step"]
    assert first_step >= 20 and open_store(str(store)).exists(latest)
    trained = [r["step"] for r in after if r["type"] == "progress" and "loss" in r.get("metrics", {})]
    assert trained and min(trained) > first_step  # it did not start over from step 1
    assert status(store)["resources"]["PretrainJob/tiny-base"]["phase"] == "Succeeded"
