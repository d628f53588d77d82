"""The embedded run loop: the operator's control loop, with a state file for an API server and local
processes for Jobs.

Each pass walks the resources in dependency order and, for each, does what a kopf handler does:
observe (its stored status, its inputs' statuses, its stage runs as the backend and the store see
them) → `reconcile` (the same pure function the operator calls) → make the decision real (start or
stop processes; with a tracking server, move the release's registry aliases) → persist the status.
Passes run whenever a stage reports something, and at least every `poll` seconds.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from lmforge.api.kinds import key, references
from lmforge.api.meta import ConditionType, Phase, Reason, Status, now_rfc3339
from lmforge.api.release import ModelRelease
from lmforge.api.validation import Manifest
from lmforge.operator.aliases import AliasBackend
from lmforge.operator.embedded.state import ResourceState, RunnerState, RunRef, StateFile
from lmforge.operator.local import LocalBackend
from lmforge.operator.reconcile import Event, InputState, Observed, ObservedRun, reconcile
from lmforge.operator.reconcile.conditions import set_condition
from lmforge.operator.reconcile.reconciler import expected_runs

TERMINAL = (Phase.SUCCEEDED, Phase.FAILED, Phase.SERVING)


class Outcome(StrEnum):
    """How a `Runner.run` ended."""

    DONE = "done"
    """Every resource Succeeded (or is Serving)."""
    FAILED = "failed"
    """Nothing more can progress and at least one resource Failed."""
    INTERRUPTED = "interrupted"
    """Ctrl-C: running stages were stopped; the next `lmforge run` resumes them."""


@dataclass
class RunOptions:
    serve: bool = True
    """Start the release's server (`--no-serve` clears it)."""
    poll: float = 1.0
    """Seconds between passes when nothing reports."""


@dataclass
class Runner:
    """Drives a set of manifests to completion with a backend, persisting status as it goes."""

    manifests: Sequence[Manifest]
    """In dependency order."""
    store_uri: str
    state_file: StateFile
    backend: LocalBackend
    options: RunOptions = field(default_factory=RunOptions)
    on_pass: Callable[[RunnerState], None] = lambda _state: None
    on_event: Callable[[str, Event], None] = lambda _key, _event: None
    wake: threading.Event = field(default_factory=threading.Event)
    aliases: AliasBackend | None = None
    """Moves the releases' model-registry aliases as they roll out (with a tracking URI only)."""

    def __post_init__(self) -> None:
        self.state = self.state_file.load()
        self.state.store = self.store_uri
        self._adopt(self.manifests)

    def reload(self, manifests: Sequence[Manifest]) -> None:
        """Take changed manifests (in dependency order) while running: the next pass reconciles the new
        specs. A changed release keeps its serving version until the new one has taken over (blue-green);
        a resource no longer in the manifests keeps its state and runs but is not reconciled."""
        self.manifests = manifests
        self._adopt(manifests)
        self.wake.set()

    def _adopt(self, manifests: Sequence[Manifest]) -> None:
        self.state.order = [key(m.resource) for m in manifests]
        self._by_key = {key(m.resource): m for m in manifests}
        for m in manifests:
            k = key(m.resource)
            manifest = m.resource.model_dump(mode="json", by_alias=True, exclude_none=True, exclude={"status"})
            old = self.state.resources.get(k)
            self.state.resources[k] = ResourceState(
                kind=m.resource.kind,
                name=m.resource.metadata.name,
                source=m.source,
                manifest=manifest,
                created=old.created if old else now_rfc3339(),
                status=old.status if old else Status(),
                runs=old.runs if old else {},
            )

    def step(self) -> None:
        """One pass over every resource."""
        self.backend.tick()
        for m in self.manifests:
            self._reconcile_one(m)
        self.state_file.save(self.state)
        self.on_pass(self.state)

    def _reconcile_one(self, m: Manifest) -> None:
        resource = m.resource
        rs = self.state.resources[key(resource)]
        inputs: dict[str, InputState] = {}
        for ref in references(resource):
            k = f"{ref.kind}/{ref.name}"
            target = self._by_key.get(k)
            inputs[k] = InputState(
                ref.kind,
                ref.name,
                target is not None,
                self.state.resources[k].status if target is not None else None,
                target.resource.spec.model_dump(mode="json", by_alias=True, exclude_none=True) if target else None,
            )
        base = Observed(
            resource=resource,
            kind=resource.kind,
            name=resource.metadata.name,
            generation=None,
            status=rs.status,
            store=self.store_uri,
            inputs=inputs,
            base_dir=str(m.base_dir),
            serving_allowed=self.options.serve,
        )
        runs: dict[str, ObservedRun] = {}
        for name, stage, prefix in expected_runs(base):
            seen = self.backend.observe(name, stage, prefix)
            if seen is not None:
                runs[name] = seen
        for name, known in rs.runs.items():  # older runs still alive in this process (superseded specs)
            if name not in runs and self.backend.knows(name):
                seen = self.backend.observe(name, self.backend.stage_of(name), known.output)
                if seen is not None:
                    runs[name] = seen
        decision = reconcile(Observed(**{**base.__dict__, "runs": runs}))
        for run in decision.runs:
            self.backend.ensure(run)
            rs.runs.setdefault(run.name, RunRef(stage=run.stage.value, output=run.spec.output))
        for name in decision.delete:
            self.backend.delete(name)
        for change in decision.adapters:
            self.backend.change_adapters(change)
        rs.status = decision.status
        if self.aliases is not None and isinstance(resource, ModelRelease):
            self.aliases.sync(resource, decision.status)  # never blocks: a background thread sends it
        for event in decision.events:
            self.on_event(rs.key, event)

    def finished(self) -> bool:
        """Nothing more will happen without the user: every resource is terminal, no stage is running."""
        return (
            all(self.state.resources[k].status.phase in TERMINAL for k in self.state.order) and not self.backend.busy()
        )

    def outcome(self) -> Outcome:
        failed = any(self.state.resources[k].status.phase is Phase.FAILED for k in self.state.order)
        return Outcome.FAILED if failed else Outcome.DONE

    def run(self) -> Outcome:
        """Pass until finished; Ctrl-C stops the running stages cleanly and returns INTERRUPTED."""
        try:
            while True:
                self.wake.clear()
                self.step()
                if self.finished():
                    return self.outcome()
                self.wake.wait(self.options.poll)
        except KeyboardInterrupt:
            self.interrupt()
            return Outcome.INTERRUPTED

    def serve_forever(self, changed: Callable[[], Sequence[Manifest] | None] = lambda: None) -> None:
        """Keep passing while a release serves (so a dying server is noticed) until Ctrl-C. `changed`
        returns the manifests again when their files changed (and still validate), else None: a changed
        release then rolls out blue-green while its current version keeps serving."""
        try:
            while any(self.state.resources[k].status.phase is Phase.SERVING for k in self.state.order):
                self.wake.clear()
                fresh = changed()
                if fresh is not None:
                    self.reload(fresh)
                self.step()
                self.wake.wait(max(self.options.poll, 2.0))
        except KeyboardInterrupt:
            pass
        self.stop()

    def interrupt(self) -> None:
        """Stop the running stages (a second Ctrl-C kills them) and mark what was in flight."""
        try:
            self.backend.stop_all()
        except KeyboardInterrupt:
            self.backend.stop_all(grace=0.0)
        now = now_rfc3339()
        for k in self.state.order:
            status = self.state.resources[k].status
            if status.phase in (Phase.RUNNING, Phase.PENDING):
                status.phase = Phase.PENDING
                set_condition(
                    status,
                    ConditionType.READY.value,
                    False,
                    Reason.PENDING.value,
                    "interrupted; `lmforge run` again resumes it",
                    None,
                    now,
                )
        self.state_file.save(self.state)
        self.on_pass(self.state)

    def stop(self) -> None:
        """Stop everything still running (servers) and record that nothing serves any more."""
        self.backend.stop_all()
        for k in self.state.order:
            status = self.state.resources[k].status
            if status.phase is Phase.SERVING:
                status.phase = Phase.SUCCEEDED
                status.endpoint = None
                set_condition(
                    status,
                    ConditionType.READY.value,
                    True,
                    Reason.COMPLETED.value,
                    "compressed model published; the server was stopped with the runner",
                )
        self.state_file.save(self.state)
        self.on_pass(self.state)
