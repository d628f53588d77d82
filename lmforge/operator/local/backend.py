"""`StageRun` → local processes, observed as `ObservedRun`s for the reconcilers.

The backend keeps one `_Run` per run name for the life of the runner process. A run that finished in
an earlier `lmforge run` has no `_Run`; it is recognised from `<output>/result.json` in the store —
the same rule the operator uses, so a second `lmforge run` redoes nothing.

Stages share the machine's cores, so at most `max_parallel` batch stages run at once (the others
report Pending, "queued"); long-running stages (serving) do not take a slot. A failed attempt is
retried `compute.backoffLimit` times with exponential backoff, unless it exited with
`EXIT_INVALID_SPEC` (retrying cannot help); each retry resumes from the stage's checkpoints because
the run id — and so the output prefix — is unchanged.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lmforge.api.contract import (
    EXIT_INVALID_SPEC,
    RESULT_KEY,
    SERVE_PORT_ENV,
    ProgressRecord,
    StageName,
    distributed_command,
    record_from_json,
    stage_command,
)
from lmforge.api.pretrain import PretrainJob
from lmforge.operator.local.adapters import AdapterClient
from lmforge.operator.local.layout import PROBE_SEQ, LayoutProbe, compiles, machine_cache_file, relative_cost
from lmforge.operator.local.process import Attempt, Command
from lmforge.operator.reconcile import adapters
from lmforge.operator.reconcile.runs import SERVING_API_KEY_ENV
from lmforge.operator.reconcile.types import AdapterChange, ObservedRun, RunState, StageRun
from lmforge.store import Store, StoreError

BACKOFF_SECONDS = 2.0
"""First retry delay; doubles per attempt, capped at `BACKOFF_MAX`."""
BACKOFF_MAX = 60.0
PROBE_SECONDS = 2.0
"""How often a serving run's endpoint is probed until it answers."""


def free_port() -> int:
    """A TCP port nobody listens on now (for torchrun's rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class _Run:
    run: StageRun
    attempts: int = 0
    attempt: Attempt | None = None
    state: RunState = RunState.PENDING
    message: str | None = None
    retryable: bool = True
    not_before: float = 0.0
    """Monotonic time before which a retry must not start."""
    progress: ProgressRecord | None = None
    result: ProgressRecord | None = None
    endpoint: str | None = None
    next_probe: float = 0.0
    port: int | None = None
    """Serving: the port the server listens on (`run.port`, or another while an older server of the
    same release holds that one)."""
    adapters: dict[str, str] = field(default_factory=dict)
    """Serving: LoRA adapter name → the artifact URI this backend knows is loaded under it (those the
    server started with, then each load and unload)."""
    adapter_errors: dict[str, tuple[str, str]] = field(default_factory=dict)
    """Serving: adapters the server refused, name → (artifact URI, why)."""


class LocalBackend:
    """Runs stages as local processes; the embedded runner's counterpart of the operator's Jobs."""

    def __init__(
        self,
        store: Store,
        state_dir: Path,
        *,
        cores: int | None = None,
        max_parallel: int = 1,
        python: str = sys.executable,
        on_change: Callable[[], None] | None = None,
        cwd: Path | None = None,
        backoff: float = BACKOFF_SECONDS,
        env: dict[str, str] | None = None,
    ) -> None:
        self.store = store
        self.state_dir = state_dir
        self.cores = cores or os.cpu_count() or 1
        self.max_parallel = max_parallel
        self.python = python
        self.on_change = on_change or (lambda: None)
        self.cwd = cwd
        self.backoff = backoff
        self.env = dict(env or {})
        """Environment given to every stage (e.g. the tracking variables), under the resource's own."""
        self._runs: dict[str, _Run] = {}
        cache = machine_cache_file(python)
        self.layouts = LayoutProbe(cache.parent, python, cwd, name=cache.name)
        """Measured processes x threads for CPU PretrainJobs that leave `compute` unset."""
        self._lock = threading.RLock()
        self._closed = False

    # Paths -----------------------------------------------------------------------------------------

    def log_path(self, name: str) -> Path:
        return self.state_dir / "logs" / f"{name}.log"

    def records_path(self, name: str) -> Path:
        return self.state_dir / "records" / f"{name}.jsonl"

    def spec_path(self, name: str) -> Path:
        return self.state_dir / "specs" / f"{name}.json"

    # What the reconcilers ask for -------------------------------------------------------------------

    def ensure(self, run: StageRun) -> None:
        """Make the run exist: queue it if new. A finished or failed run is left as it is; a server's
        latest spec (its adapters may have changed) is kept for a restart."""
        with self._lock:
            if run.name not in self._runs:
                self._runs[run.name] = _Run(run, message="queued")
            elif run.long_running:
                self._runs[run.name].run = run
        self.tick()

    def change_adapters(self, todo: AdapterChange) -> None:
        """Unload, then load, LoRA adapters in a Ready server of ours (each adapter's artifact
        downloaded and hash-checked next to the runner's state first). A refusal is remembered with
        its reason (reported in `observe`), not raised."""
        with self._lock:
            entry = self._runs.get(todo.run)
            if entry is None or entry.state is not RunState.READY or entry.endpoint is None:
                return
            client = self._adapter_client(entry)
        for name in todo.unload:
            why = client.unload(name)  # gone already is as good
            if why is not None:
                _append(self.log_path(todo.run), f"adapter {name} not unloaded: {why}")
                continue
            _append(self.log_path(todo.run), f"adapter {name} unloaded")
            with self._lock:
                entry.adapters.pop(name, None)
        for name, uri in todo.load.items():
            try:
                client.load(name, uri)
            except (StoreError, OSError, ValueError) as exc:
                why = str(exc)
                _append(self.log_path(todo.run), f"adapter {name} ({uri}) not loaded: {why}")
                with self._lock:
                    entry.adapter_errors[name] = (uri, why)
                continue
            _append(self.log_path(todo.run), f"adapter {name} loaded from {uri}")
            with self._lock:
                entry.adapters[name] = uri
                entry.adapter_errors.pop(name, None)
        self.on_change()

    def _adapter_client(self, entry: _Run) -> AdapterClient:
        assert entry.endpoint is not None
        return AdapterClient(
            entry.endpoint, self.state_dir / "adapters", api_key=self._env(entry.run).get(SERVING_API_KEY_ENV)
        )

    def delete(self, name: str) -> None:
        """Stop and forget a run (superseded by a newer spec)."""
        with self._lock:
            entry = self._runs.pop(name, None)
        if entry is not None and entry.attempt is not None:
            entry.attempt.stop()
            entry.attempt.close()

    def knows(self, name: str) -> bool:
        """Whether this backend started (or queued) the run."""
        with self._lock:
            return name in self._runs

    def stage_of(self, name: str) -> StageName:
        with self._lock:
            return self._runs[name].run.stage

    def observe(self, name: str, stage: StageName, prefix: str) -> ObservedRun | None:
        """What is known of a run: our process, else its `result.json` in the store, else nothing."""
        with self._lock:
            entry = self._runs.get(name)
        result = None
        if stage is not StageName.SERVE and (entry is None or entry.state is not RunState.FAILED):
            result = self._stored_result(prefix)
        if entry is None:
            if result is None:
                return None
            return ObservedRun(
                name=name, run_id=result.run_id, state=RunState.SUCCEEDED, stage=stage, attempts=0, result=result
            )
        served = self._served_adapters(entry)
        with self._lock:
            if entry.attempt is not None:  # still exiting (or other workers still busy): not done yet
                result = None
            state = RunState.SUCCEEDED if result is not None and stage is not StageName.SERVE else entry.state
            return ObservedRun(
                name=name,
                run_id=entry.run.run_id,
                state=state,
                stage=stage,
                attempts=max(entry.attempts, 1),
                message=entry.message,
                retryable=entry.retryable,
                progress=entry.progress,
                result=result,
                endpoint=entry.endpoint,
                adapters=served,
                adapter_errors=dict(entry.adapter_errors),
            )

    def _served_adapters(self, entry: _Run) -> dict[str, str] | None:
        """A Ready server's adapters as its `/v1/models` lists them, each with the artifact URI we
        know it was loaded from; None when it is not Ready or does not answer (nothing is decided)."""
        with self._lock:
            if entry.state is not RunState.READY or entry.endpoint is None or entry.attempt is None:
                return None
            client = self._adapter_client(entry)
        try:
            names = client.served()
        except (OSError, ValueError):
            return None
        with self._lock:
            return {n: entry.adapters.get(n, "") for n in names}

    def _stored_result(self, prefix: str) -> ProgressRecord | None:
        try:
            key = f"{prefix}/{RESULT_KEY}"
            return record_from_json(self.store.get_bytes(key)) if self.store.exists(key) else None
        except StoreError:
            return None

    # Driving processes -----------------------------------------------------------------------------

    def busy(self) -> int:
        """Batch runs holding a slot now."""
        with self._lock:
            return sum(
                1
                for e in self._runs.values()
                if not e.run.long_running and e.attempt is not None and e.state is RunState.RUNNING
            )

    def active(self) -> bool:
        """Whether any stage process is alive."""
        with self._lock:
            return any(e.attempt is not None and e.attempt.running() for e in self._runs.values())

    def tick(self) -> None:
        """Advance every run: reap exits, schedule retries, start queued runs, probe servers."""
        if self._closed:
            return
        now = time.monotonic()
        with self._lock:
            entries = list(self._runs.values())
        for entry in entries:
            self._advance(entry, now)
        for entry in entries:
            if (
                entry.state is RunState.PENDING
                and entry.attempt is None
                and now >= entry.not_before
                and (entry.run.long_running or self.busy() < self.max_parallel)
            ):
                self._start(entry)

    def _advance(self, entry: _Run, now: float) -> None:
        attempt = entry.attempt
        if attempt is None:
            return
        with self._lock:
            entry.progress = attempt.progress or entry.progress
        code = attempt.returncode()
        if code is None:
            if entry.run.long_running and entry.state is not RunState.READY and now >= entry.next_probe:
                entry.next_probe = now + PROBE_SECONDS
                self._probe(entry, attempt)
            return
        attempt.close()
        with self._lock:
            entry.attempt = None
            if attempt.stopped:
                entry.state, entry.message = RunState.PENDING, "stopped"
                return
            if code == 0 and not entry.run.long_running:
                entry.state, entry.result = RunState.SUCCEEDED, attempt.result
                entry.message = None
                return
            reason = attempt.error or (f"exited with status {code}" if code else "server exited")
            entry.retryable = code != EXIT_INVALID_SPEC
            limit = entry.run.compute.backoff_limit
            if entry.retryable and entry.attempts <= limit:
                delay = min(BACKOFF_MAX, self.backoff * 2 ** (entry.attempts - 1))
                entry.state, entry.not_before = RunState.PENDING, now + delay
                entry.message = f"attempt {entry.attempts} failed ({reason}); retrying in {delay:.0f}s"
            else:
                entry.state, entry.message = RunState.FAILED, reason
                if entry.retryable and limit:
                    entry.message += f" (after {entry.attempts} attempts)"
            _append(self.log_path(entry.run.name), f"attempt {entry.attempts} ended: status {code}: {reason}")
        self.on_change()

    def _probe(self, entry: _Run, attempt: Attempt) -> None:
        """A server is Ready when it says so (a result record with its endpoint) or answers /v1/models."""
        endpoint = (
            attempt.result.artifacts.get("endpoint") if attempt.result else None
        ) or f"http://127.0.0.1:{entry.port or entry.run.port or 8000}/v1"
        ready = attempt.result is not None
        if not ready:
            try:
                with urllib.request.urlopen(endpoint.rstrip("/") + "/models", timeout=1.0) as resp:
                    ready = resp.status == 200
            except (OSError, ValueError):
                ready = False
        if ready:
            with self._lock:
                entry.state, entry.endpoint, entry.message = RunState.READY, endpoint, f"serving at {endpoint}"
            self.on_change()

    def _start(self, entry: _Run) -> None:
        run = entry.run
        spec_file = self.spec_path(run.name)
        spec_file.parent.mkdir(parents=True, exist_ok=True)
        spec_file.write_text(json.dumps(run.spec.wire(), indent=2), encoding="utf-8")
        commands = self.commands(run, str(spec_file))
        if run.long_running:
            entry.port = self._serving_port(entry)
            if entry.port != run.port:
                commands = [Command(c.argv, {**c.env, SERVE_PORT_ENV: str(entry.port)}, c.label) for c in commands]
        attempt = Attempt(commands, self.log_path(run.name), self.records_path(run.name), self.on_change, self.cwd)
        with self._lock:
            if run.long_running:  # `--lora-modules` of this start
                entry.adapters, entry.adapter_errors = adapters.of_spec(run.spec), {}
            entry.attempts += 1
            entry.attempt = attempt
            entry.state = RunState.RUNNING
            entry.message = None if entry.attempts == 1 else f"attempt {entry.attempts}"
        attempt.start()
        self.on_change()

    def _serving_port(self, entry: _Run) -> int | None:
        """`run.port`, unless another live server of ours holds it (the release's previous version,
        serving until the new one has taken over): then a free port beside it."""
        with self._lock:
            taken = {
                e.port for e in self._runs.values() if e is not entry and e.run.long_running and e.attempt is not None
            }
        return free_port() if entry.run.port in taken else entry.run.port

    def commands(self, run: StageRun, spec_file: str) -> list[Command]:
        """The processes of one attempt: torchrun for several processes, indexed workers, or one."""
        env = self._env(run)
        procs = max(1, min(run.nproc_per_node * run.nodes, self.cores))
        threads = run.compute.threads or max(1, self.cores // max(procs, run.workers if run.workers > 1 else 1))
        if self._measured_layout(run):
            layout = self.layouts.layout(self.cores, compiled=self._compiles(run))
            procs, threads = layout.processes, layout.threads
        env.setdefault("OMP_NUM_THREADS", str(threads))
        if procs > 1:
            argv = distributed_command(
                run.stage, spec_file, nproc_per_node=procs, master_port=free_port(), python=self.python
            )
            return [Command(argv, env)]
        argv = stage_command(run.stage, spec_file, self.python)
        if run.workers > 1:
            return [Command(argv, {**env, "LMFORGE_WORKER_INDEX": str(i)}, f"w{i}") for i in range(run.workers)]
        return [Command(argv, env)]

    @staticmethod
    def _measured_layout(run: StageRun) -> bool:
        """A single-node CPU PretrainJob that names neither processes nor threads gets the layout this
        machine measured fastest (see `layout`), not an assumed one."""
        return (
            run.stage is StageName.PRETRAIN
            and run.gpus_per_node == 0
            and run.nodes == 1
            and run.compute.processes is None
            and run.compute.threads is None
        )

    def _compiles(self, run: StageRun) -> bool:
        """Whether the PretrainJob's layout comes from compiled rates (`layout.compiles`). Its length in
        tokens: the budget, or its steps' sequences at the probe's length (the Dataset's own length is
        only known to the stage)."""
        spec = PretrainJob.model_validate(run.spec.resource).spec
        training = spec.training
        tokens = training.tokens or (
            (training.max_steps or 0) * training.micro_batch_size * training.gradient_accumulation_steps * PROBE_SEQ
        )
        eager_rate = self.layouts.eager_rate(self.cores) if training.compile == "auto" else None
        return compiles(training.compile, tokens, eager_rate, relative_cost(spec.model))

    def _env(self, run: StageRun) -> dict[str, str]:
        env = {"PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"), **self.env}
        env.update(run.compute.env)
        for name, ref in {**run.compute.secret_env, **run.secret_env}.items():  # Secrets: from our own env
            value = os.environ.get(ref.key, os.environ.get(ref.name))
            if value is not None:
                env[name] = value
        return env

    def stop_all(self, grace: float = 20.0) -> list[str]:
        """Stop every running process cleanly, starting nothing afterwards; returns the runs stopped."""
        self._closed = True
        with self._lock:
            running = [e for e in self._runs.values() if e.attempt is not None]
        for entry in running:
            assert entry.attempt is not None
            entry.attempt.note("stopped by the runner (Ctrl-C or end of run)")
            entry.attempt.stop(grace)
            entry.attempt.close()
            with self._lock:
                entry.attempt, entry.state, entry.message = None, RunState.PENDING, "stopped"
        return [e.run.name for e in running]


def _append(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")
