"""A real MLflow tracking server for tests: `mlflow server` with a SQLite backend and proxied artifacts
in a temporary directory, on a free loopback port.

MLflow is not in the shared venv (its pins of pyarrow/cachetools conflict with the trainer's), so the
server runs from its own virtual environment: `$LMFORGE_MLFLOW_PYTHON`, else
`~/.cache/lmforge/mlflow-server/bin/python` (`python3.11 -m venv ~/.cache/lmforge/mlflow-server &&
~/.cache/lmforge/mlflow-server/bin/pip install -c scripts/mlflow-server-constraints.txt mlflow==3.17.2`).
Tests read back what was logged with the real `MlflowClient`, run by that interpreter (`query` below),
not with LMForge's own REST client.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

STARTUP_TIMEOUT_S = 120.0
_QUERY = Path(__file__).with_name("mlflow_query.py")


def find_mlflow_python() -> str | None:
    env = os.environ.get("LMFORGE_MLFLOW_PYTHON")
    default = Path.home() / ".cache" / "lmforge" / "mlflow-server" / "bin" / "python"
    for candidate in (env, str(default)):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MlflowServer:
    """A running (or stopped, then restarted on the same port and data) MLflow server."""

    def __init__(self, python: str, work: Path, port: int) -> None:
        self.python = python
        self.work = work
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = work / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    self.python,
                    "-m",
                    "mlflow",
                    "server",
                    "--backend-store-uri",
                    f"sqlite:///{self.work / 'mlflow.db'}",
                    "--artifacts-destination",
                    str(self.work / "artifacts"),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--workers",
                    "1",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.work,
                # no huey job consumers (7 processes of ~230 MB each): tracking needs none of them
                env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
            )
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:  # eventually: /health answers
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("mlflow server did not start:\n" + self.log.read_text()[-3000:])
            time.sleep(0.3)

    def stop(self) -> None:
        """Kill the server (its whole process group: the workers too)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, 9)
            self.proc.wait(10)
        self.proc = None

    def query(self, what: str, **args: Any) -> Any:
        """Ask the real `MlflowClient` (in the server's interpreter): see `mlflow_query.py`."""
        out = subprocess.run(
            [self.python, "-P", str(_QUERY), self.url, what, json.dumps(args)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if out.returncode != 0:
            raise AssertionError(f"mlflow query {what} failed:\n{out.stderr[-3000:]}")
        return json.loads(out.stdout)

    def eventually(self, what: str, check: Any, timeout: float = 30.0, **args: Any) -> Any:
        """Poll `query` until `check(result)` is truthy."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(what, **args)
            if check(result):
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"mlflow {what} never satisfied the check; last: {json.dumps(result)[:3000]}")
            time.sleep(0.5)


@contextmanager
def mlflow_server() -> Iterator[MlflowServer]:
    python = find_mlflow_python()
    if python is None:
        pytest.fail("no MLflow server interpreter: set $LMFORGE_MLFLOW_PYTHON (see tests/support/mlflow.py)")
    work = Path(tempfile.mkdtemp(prefix="lmforge-mlflow-"))
    server = MlflowServer(python, work, free_port())
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
