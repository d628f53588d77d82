"""The serve stage end to end, as the embedded runner starts it: a W8A8 release from the compress
stage, served by vLLM's CPU build through `python -m lmforge.trainer serve`, answering the OpenAI
completions and chat endpoints, then stopped with SIGTERM (exit 0). One vLLM start for the module."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from lmforge.api.contract import (
    InputArtifacts,
    ProgressRecord,
    RecordType,
    StageName,
    parse_record,
)
from trainer.compress.world import World

pytestmark = [pytest.mark.ml, pytest.mark.slow]
READY_S = 420


@dataclass
class Served:
    proc: subprocess.Popen[str]
    records: list[ProgressRecord]
    endpoint: str
    world: World


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _post(url: str, body: dict[str, Any]) -> Any:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as resp:
        return json.loads(resp.read())


@pytest.fixture(scope="module")
def served(world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("serve-run")
    os.environ["LMFORGE_WORK_DIR"] = str(tmp / "work")
    arts, _ = world.compress("rel", {"quantization": {"method": "w8a8"}})
    spec = world.compress_spec(
        "rel",
        {"quantization": {"method": "w8a8"}},
        serving={"servedModelName": "tiny", "maxModelLen": 128, "port": _free_port(), "extraArgs": ["--enforce-eager"]},
    )
    spec = spec.model_copy(
        update={
            "stage": StageName.SERVE,
            "output": "releases/rel/serve",
            "run_id": "rel-serve",
            "inputs": {
                "ModelRelease/rel": InputArtifacts(kind="ModelRelease", name="rel", artifacts={"model": arts["model"]})
            },
        }
    )
    spec_file = tmp / "spec.json"
    spec_file.write_text(json.dumps(spec.wire()))
    env = {**os.environ, "LMFORGE_CACHE": str(tmp / "cache"), "LMFORGE_WORK_DIR": str(tmp / "work")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "lmforge.trainer", "serve", "--spec", str(spec_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
        start_new_session=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout or []], daemon=True).start()
    records: list[ProgressRecord] = []
    deadline = time.monotonic() + READY_S
    try:
        while not any(r.type == RecordType.RESULT for r in records):
            assert proc.poll() is None, f"serve stage exited with {proc.returncode}: {records[-1:]}"
            assert time.monotonic() < deadline, "serve stage not ready in time"
            try:
                rec = parse_record(lines.get(timeout=1))
            except queue.Empty:
                continue
            if rec is not None:
                records.append(rec)
        yield Served(proc, records, records[-1].artifacts["endpoint"], world)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_ready_is_reported_once_serving(served: Served) -> None:
    ready = [r for r in served.records if r.message and r.message.startswith("serving at http://127.0.0.1:")]
    assert ready and ready[0].metrics["smoke_tokens"] > 0
    result = json.loads((served.world.root / "store/releases/rel/serve/result.json").read_text())
    assert result["artifacts"]["endpoint"] == served.endpoint and served.endpoint.endswith("/v1")


def test_completions(served: Served) -> None:
    out = _post(
        served.endpoint + "/completions", {"model": "tiny", "prompt": "the red cat", "max_tokens": 6, "temperature": 0}
    )
    assert out["usage"]["completion_tokens"] == 6 and out["choices"][0]["text"]


def test_chat_completions(served: Served) -> None:
    out = _post(
        served.endpoint + "/chat/completions",
        {"model": "tiny", "messages": [{"role": "user", "content": "the old dog"}], "max_tokens": 5},
    )
    assert out["choices"][0]["message"]["role"] == "assistant" and out["usage"]["completion_tokens"] > 0


def test_sigterm_stops_gracefully(served: Served) -> None:
    port = int(served.endpoint.rsplit(":", 1)[1].split("/")[0])
    served.proc.send_signal(signal.SIGTERM)
    assert served.proc.wait(timeout=90) == 0
    with socket.socket() as s, pytest.raises(ConnectionRefusedError):  # nothing listens there any more
        s.connect(("127.0.0.1", port))
