"""One attempt's output pumps: a log that cannot be written (ENOSPC) never hangs the stage."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from support.waiting import eventually

from lmforge.api.contract import ProgressRecord, RecordType, StageName
from lmforge.operator.local.process import Attempt, Command

FULL = Path("/dev/full")
"""Every write to it fails with ENOSPC: a disk that is full."""


@pytest.mark.skipif(not FULL.exists(), reason="needs /dev/full (Linux)")
@pytest.mark.parametrize("when", ["from the start", "mid-run"])
def test_a_full_disk_under_the_log_does_not_hang_the_stage(tmp_path: Path, when: str) -> None:
    result = ProgressRecord(type=RecordType.RESULT, stage=StageName.DATASET, run_id="r", artifacts={"a": "b"})
    # ~1 MiB on each stream, far past a pipe's 64 KiB: a pump that stopped reading blocks the child.
    script = (
        "import sys\n"
        "for i in range(16384):\n"
        "    print('x' * 63)\n"
        "    print('y' * 63, file=sys.stderr)\n"
        f"print({result.line()!r})\n"
        "print('lmforge: error: not really', file=sys.stderr)\n"
    )
    paths = (FULL, FULL) if when == "from the start" else (tmp_path / "log", tmp_path / "records")
    attempt = Attempt([Command([sys.executable, "-c", script], {})], *paths)
    attempt.start()
    if when == "mid-run":  # the disk fills while the stage runs: the next write fails
        with attempt._lock:
            attempt._log = FULL.open("a", encoding="utf-8", buffering=1)
    try:
        code = eventually(
            lambda: (attempt.returncode(),) if attempt.returncode() is not None else None,
            timeout=60,
            what="the stage to exit despite the full disk",
        )
    finally:
        attempt.stop(grace=1.0)
        attempt.close()
    assert code == (0,)
    assert attempt.result is not None and attempt.result.artifacts == {"a": "b"}  # records still parsed
    assert attempt.error == "not really"
    assert attempt.write_error is not None and "No space left" in attempt.write_error
