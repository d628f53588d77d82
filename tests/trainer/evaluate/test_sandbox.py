"""Hostile completions are contained by the sandbox and scored as failures; the host is untouched."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from lmforge.trainer.evaluate import code
from lmforge.trainer.evaluate.sandbox import Limits, run_program
from lmforge.trainer.evaluate.tasks import CodeRow

from .conftest import ScriptedBackend


def _sandbox_processes() -> list[int]:
    """Processes still running a sandboxed program (their cwd is a sandbox directory)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if "lmforge-sandbox-" in os.readlink(entry / "cwd"):
                    out.append(int(entry.name))
            except OSError:
                continue
    return out


def _eventually_none_left(timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while _sandbox_processes():
        assert time.monotonic() < deadline, f"sandbox processes left: {_sandbox_processes()}"
        time.sleep(0.05)


def test_hostile_completions_fail_and_the_host_is_untouched(tmp_path: Path) -> None:
    victim_dir = tmp_path / "host"
    victim_dir.mkdir()
    victim = victim_dir / "precious.txt"
    victim.write_text("keep me")
    os.chmod(tmp_path, 0o755)
    os.chmod(victim_dir, 0o755)
    os.chmod(victim, 0o644)
    bodies = {
        "correct": "    return a + b\n",
        "wrong": "    return a - b\n",
        "loop": "    while True:\n        pass\n",
        "fork": "    import os\n    while True:\n        try:\n            os.fork()\n        except OSError:\n            pass\n",
        "network": "    import urllib.request\n    urllib.request.urlopen('http://1.1.1.1', timeout=3)\n    return a + b\n",
        "loopback": "    import socket\n    socket.create_connection(('127.0.0.1', 22), timeout=3)\n    return a + b\n",
        "delete": f"    import os, shutil\n    os.remove({str(victim)!r})\n    return a + b\n",
        "rmtree": f"    import shutil\n    shutil.rmtree({str(victim_dir)!r})\n    return a + b\n",
        "overwrite": f"    open({str(victim)!r}, 'w').write('pwned')\n    return a + b\n",
    }
    rows = [
        CodeRow(name, f"# {name}\ndef add(a, b):\n", "def check(f):\n    assert f(2, 3) == 5\n", "add")
        for name in bodies
    ]
    backend = ScriptedBackend(lambda prompt: bodies[prompt.split("\n")[0][2:]])
    done: list[int] = []
    started = time.monotonic()
    metrics = code.evaluate(
        backend, rows, samples=1, max_new_tokens=64, timeout_seconds=3.0, seed=0, advance=done.append
    )
    assert metrics["pass@1"].value() == pytest.approx(1 / len(rows))  # only `correct` passes
    assert sum(done) == len(rows)
    assert time.monotonic() - started < 30
    assert victim.read_text() == "keep me"
    _eventually_none_left()


def test_outcomes_say_why_and_what_confined_it() -> None:
    ok = run_program("print('hi')")
    assert ok.passed and ok.output.strip() == "hi"
    if os.geteuid() == 0:
        assert ok.isolation == "bubblewrap"
    slow = run_program("import time\ntime.sleep(60)", Limits(wall_seconds=1.0))
    assert slow.status == "timeout" and not slow.passed
    spin = run_program("while True: pass", Limits(wall_seconds=20.0, cpu_seconds=1))
    assert spin.status == "failed" and spin.returncode != 0  # killed by RLIMIT_CPU, not the wall clock
    env = run_program("import os\nassert 'AWS_SECRET_ACCESS_KEY' not in os.environ and len(os.environ) <= 5")
    assert env.passed
    _eventually_none_left()
