"""The embedded runner's memory: every resource's status, kept in one JSON file beside the store.

This plays the part the API server plays for the operator: `lmforge status`, `lmforge logs` and
`lmforge chat` read it, and a second `lmforge run` starts from it. It is small (one object per
resource), written atomically (temporary file + rename) after every pass, so a crash leaves the
previous version. Finished work is *not* trusted from here — it is recognised from each run's
`result.json` in the store — so a lost state file costs nothing but history.

With a local store the state lives in `<store>/.lmforge-state/`; an S3 store cannot hold a lock, so
its state lives in `./.lmforge/state/<bucket-prefix>/` on this machine (the runner says so).

A `flock` on `<state>/lock` makes a second `lmforge run` on the same store fail fast with a clear
message instead of two runners starting the same stages; the kernel drops the lock if the runner
dies, so a crash never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
from pathlib import Path
from typing import IO, Any

from pydantic import BaseModel, Field

from lmforge.api.meta import Phase, Status, now_rfc3339
from lmforge.store.uri import parse_store_uri

STATE_DIRNAME = ".lmforge-state"
DEFAULT_STORE = ".lmforge"
"""`lmforge run` without `--store` keeps artifacts here, relative to the working directory."""


class RunRef(BaseModel):
    """A stage run a resource has had (for logs and the report)."""

    stage: str
    output: str
    """Output prefix in the store."""


class ResourceState(BaseModel):
    """One resource as the runner last saw it."""

    kind: str
    name: str
    source: str = ""
    """Manifest file and document it came from."""
    manifest: dict[str, Any] = Field(default_factory=dict)
    """The resource as applied (apiVersion, kind, metadata, spec)."""
    created: str = Field(default_factory=now_rfc3339)
    """When a runner first saw it (the AGE column)."""
    status: Status = Field(default_factory=Status)
    runs: dict[str, RunRef] = Field(default_factory=dict)
    """Run name → its stage and output, in the order they were started."""

    @property
    def key(self) -> str:
        return f"{self.kind}/{self.name}"


class RunnerState(BaseModel):
    """Everything in the state file."""

    store: str
    resources: dict[str, ResourceState] = Field(default_factory=dict)
    order: list[str] = Field(default_factory=list)
    """Resource keys in dependency order (as `lmforge run` last ordered them)."""
    updated: str = Field(default_factory=now_rfc3339)

    def phases(self) -> dict[str, Phase]:
        return {k: r.status.phase for k, r in self.resources.items()}


class Locked(RuntimeError):
    """Another runner holds the store."""


def state_dir_for(store_uri: str, cwd: Path | None = None) -> tuple[Path, str | None]:
    """(state directory, a note for the user when it is not inside the store)."""
    parsed = parse_store_uri(store_uri)
    if parsed.scheme != "s3":
        assert parsed.path is not None
        return Path(parsed.path) / STATE_DIRNAME, None
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{parsed.bucket}/{parsed.prefix}").strip("-")
    path = (cwd or Path.cwd()) / DEFAULT_STORE / "state" / safe
    return path, f"the store is on S3; the runner's state (status, logs, lock) is kept locally in {path}"


class StateFile:
    """Reads and writes the state file; holds the runner lock while a run is in progress."""

    def __init__(self, directory: Path, store_uri: str) -> None:
        self.dir = directory
        self.store_uri = store_uri
        self.path = directory / "state.json"
        self._lock_file: IO[str] | None = None

    def load(self) -> RunnerState:
        if not self.path.exists():
            return RunnerState(store=self.store_uri)
        return RunnerState.model_validate_json(self.path.read_text(encoding="utf-8"))

    def save(self, state: RunnerState) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        state.updated = now_rfc3339()
        tmp = self.path.with_name(f".state.{os.getpid()}.tmp")
        tmp.write_text(state.model_dump_json(indent=1), encoding="utf-8")
        os.replace(tmp, self.path)

    def acquire(self) -> None:
        """Take the runner lock or raise `Locked` saying who holds it."""
        self.dir.mkdir(parents=True, exist_ok=True)
        f = (self.dir / "lock").open("a+", encoding="utf-8")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise Locked(
                f"another `lmforge run` ({holder}) is using the store {self.store_uri}; wait for it "
                "to finish, or stop it with Ctrl-C in its terminal"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"pid": os.getpid(), "since": now_rfc3339()}))
        f.flush()
        self._lock_file = f

    def release(self) -> None:
        if self._lock_file is not None:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None

    def active(self) -> bool:
        """Whether some `lmforge run` holds the lock right now."""
        lock = self.dir / "lock"
        if self._lock_file is not None:
            return True
        if not lock.exists():
            return False
        with lock.open("a+", encoding="utf-8") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(f, fcntl.LOCK_UN)
            return False

    def log_path(self, run_name: str) -> Path:
        return self.dir / "logs" / f"{run_name}.log"

    def records_path(self, run_name: str) -> Path:
        return self.dir / "records" / f"{run_name}.jsonl"
