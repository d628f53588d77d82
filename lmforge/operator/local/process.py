"""One attempt of a stage run: its processes, the threads pumping their output, and what they said.

Every process starts in its own session (its own process group), so the terminal's Ctrl-C reaches
only the runner, which then stops stages in order — a stage is never killed half-way through writing
a checkpoint just because the user pressed a key. Output lines go to the run's log file as they
come; lines carrying a `ProgressRecord` are parsed live and also appended to a records file (the
run report plots loss curves from it).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from lmforge.api.contract import ERROR_PREFIX, EXIT_INVALID_SPEC, ProgressRecord, RecordType, parse_record

log = logging.getLogger(__name__)


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM if the runner dies (even by SIGKILL), so no stage is
    left running unwatched. Linux only (prctl PR_SET_PDEATHSIG); elsewhere a no-op."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


@dataclass(frozen=True)
class Command:
    """One process to start: its argv and its extra environment."""

    argv: list[str]
    env: dict[str, str]
    label: str = ""
    """Prefix for its log lines when an attempt has several processes (e.g. `w1`)."""


class Attempt:
    """Starts the processes of one attempt and watches them until they exit or are stopped."""

    def __init__(
        self,
        commands: list[Command],
        log_path: Path,
        records_path: Path,
        on_change: Callable[[], None] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.commands = commands
        self.log_path = log_path
        self.records_path = records_path
        self.on_change = on_change or (lambda: None)
        self.cwd = cwd
        self.procs: list[subprocess.Popen[str]] = []
        self.progress: ProgressRecord | None = None
        self.result: ProgressRecord | None = None
        self.error: str | None = None
        """The last `lmforge: error:` line (or `error` record) any process printed."""
        self.stopped = False
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._log: IO[str] | None = None
        self._records: IO[str] | None = None
        self.write_error: str | None = None
        """Why the log or records file stopped being written (e.g. ENOSPC), or None."""

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.records_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("a", encoding="utf-8", buffering=1)
        self._records = self.records_path.open("a", encoding="utf-8", buffering=1)
        for cmd in self.commands:
            with self._lock:
                self._write("_log", f"# {time.strftime('%Y-%m-%d %H:%M:%S')} start {' '.join(cmd.argv)}\n")
            proc = subprocess.Popen(
                cmd.argv,
                env={**os.environ, **cmd.env},
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                bufsize=1,
                start_new_session=True,
                errors="replace",
                preexec_fn=_die_with_parent,
            )
            self.procs.append(proc)
            for stream, is_err in ((proc.stdout, False), (proc.stderr, True)):
                assert stream is not None
                thread = threading.Thread(target=self._pump, args=(stream, is_err, cmd.label), daemon=True)
                thread.start()
                self._threads.append(thread)

    def _pump(self, stream: IO[str], is_err: bool, label: str) -> None:
        """Copy a stream to the log line by line, keeping the records and the error line.

        The stream is always drained to its end, whatever happens to the log: a pump that stopped
        reading (say, on ENOSPC writing the log) would leave the stage blocked on a full pipe for good."""
        prefix = f"[{label}] " if label else ""
        for raw in stream:
            line = raw.rstrip("\n")
            record = None if is_err else parse_record(line)
            with self._lock:
                self._write("_log", prefix + line + "\n")
                if record is not None:
                    self._take(record, line)
                elif is_err and line.startswith(ERROR_PREFIX):
                    self.error = line[len(ERROR_PREFIX) :].strip()
            if record is not None:
                self.on_change()

    def _write(self, which: str, text: str) -> None:
        """Append to the log or the records file (lock held); on a write error (a full disk) stop
        writing that file, remember why, and go on: the stage's own outcome does not depend on it."""
        f: IO[str] | None = getattr(self, which)
        if f is None:
            return
        try:
            f.write(text)
        except OSError as exc:
            self.write_error = self.write_error or f"cannot write {f.name}: {exc}"
            log.warning("%s; its further lines are dropped", self.write_error)
            setattr(self, which, None)
            try:
                f.close()
            except OSError:
                pass

    def _take(self, record: ProgressRecord, line: str) -> None:
        self._write("_records", line.split(" ", 1)[1] + "\n")
        if record.type is RecordType.PROGRESS:
            self.progress = record
        elif record.type is RecordType.RESULT:
            self.result = record
        elif record.type is RecordType.ERROR and record.message:
            self.error = record.message

    def returncode(self) -> int | None:
        """None while any process runs; then the first non-zero exit status (2 wins: don't retry), or 0."""
        codes = [p.poll() for p in self.procs]
        if any(c is None for c in codes):
            failed = [c for c in codes if c not in (None, 0)]
            if failed:  # one worker died: the others cannot finish the stage
                self.stop(grace=5.0)
                return self.returncode()
            return None
        for t in self._threads:
            t.join(timeout=5.0)
        nonzero = [c for c in codes if c]
        if EXIT_INVALID_SPEC in nonzero:
            return EXIT_INVALID_SPEC
        return nonzero[0] if nonzero else 0

    def running(self) -> bool:
        return any(p.poll() is None for p in self.procs)

    def stop(self, grace: float = 20.0) -> None:
        """SIGINT each process group (a stage saves and exits), then SIGTERM, then SIGKILL."""
        self.stopped = True
        for sig, wait in ((signal.SIGINT, grace), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            alive = [p for p in self.procs if p.poll() is None]
            if not alive:
                break
            for p in alive:
                try:
                    os.killpg(p.pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and any(p.poll() is None for p in alive):
                time.sleep(0.05)
        # Children a stage left behind in its group (e.g. an inference server) go too.
        for p in self.procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def close(self) -> None:
        for t in self._threads:
            t.join(timeout=2.0)
        with self._lock:
            for f in (self._log, self._records):
                if f is not None:
                    try:
                        f.close()
                    except OSError:  # the last buffered line on a full disk
                        pass
            self._log = self._records = None

    def note(self, text: str) -> None:
        """A line of the runner's own in the log (retries, stops)."""
        with self._lock:
            self._write("_log", f"# {time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")
