"""What the user sees while `lmforge run` works: a live table (rich), quiet lines, or JSON lines.

All three get the same calls — `update(state)` after every pass and `event(key, event)` for each
reconciler event — so the loop does not care which one is on.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Protocol

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from lmforge.api.meta import Phase, Status
from lmforge.operator.embedded.state import ResourceState, RunnerState
from lmforge.operator.reconcile import Event

PHASE_STYLE = {
    Phase.PENDING: "dim",
    Phase.WAITING: "dim",
    Phase.RUNNING: "cyan",
    Phase.SUCCEEDED: "green",
    Phase.FAILED: "bold red",
    Phase.SERVING: "bold green",
}


class View(Protocol):
    def start(self) -> None: ...
    def update(self, state: RunnerState) -> None: ...
    def event(self, key: str, event: Event) -> None: ...
    def say(self, text: str, error: bool = False) -> None: ...
    def stop(self) -> None: ...


def duration(seconds: float | None) -> str:
    """`1h02m`, `3m05s`, `42s`; empty when unknown."""
    if seconds is None:
        return ""
    s = int(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def age(since: str | None) -> str:
    if not since:
        return ""
    then = datetime.strptime(since, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    return duration((datetime.now(UTC) - then).total_seconds())


def ready_message(status: Status) -> str:
    cond = status.condition("Ready")
    return cond.message if cond else ""


def figures(status: Status) -> tuple[str, str]:
    """(loss, tokens/s) of the running or finished stage, formatted."""
    loss = status.metrics.get("loss")
    tps = status.metrics.get("tokens_per_second")
    return (f"{loss:.3f}" if loss is not None else "", f"{tps:,.0f}" if tps is not None else "")


def table(state: RunnerState, active: bool = True) -> Table:
    """One line per resource, like `kubectl get`, plus a bar for the running stage."""
    t = Table(box=None, pad_edge=False, header_style="bold")
    for col in ("RESOURCE", "PHASE", "PROGRESS", "", "LOSS", "TOK/S", "ETA", "MESSAGE"):
        t.add_column(col, no_wrap=col != "MESSAGE", overflow="ellipsis")
    for k in state.order:
        rs = state.resources[k]
        st = rs.status
        prog = st.progress
        bar: ProgressBar | str = ""
        steps = ""
        if prog is not None and st.phase in (Phase.RUNNING, Phase.PENDING) and prog.total:
            bar = ProgressBar(total=float(prog.total), completed=float(min(prog.step, prog.total)), width=20)
            steps = f"{prog.stage} {prog.step}/{prog.total}"
        elif st.phase in (Phase.SUCCEEDED, Phase.SERVING):
            bar = ProgressBar(total=1.0, completed=1.0, width=20)
        loss, tps = figures(st)
        eta = duration(prog.eta_seconds) if prog and st.phase is Phase.RUNNING else ""
        phase = st.phase.value if active or st.phase is not Phase.RUNNING else "Interrupted"
        msg = (
            (st.endpoint or "") + (f" (adapters {', '.join(st.adapters)})" if st.adapters else "")
            if st.phase is Phase.SERVING
            else (st.key_metric or "")
            if st.phase is Phase.SUCCEEDED
            else ready_message(st)
        )
        t.add_row(k, Text(phase, style=PHASE_STYLE.get(st.phase, "")), bar, steps, loss, tps, eta, msg or "")
    return t


class LiveView:
    """A live table on a terminal; on a pipe, event lines as they come and the table at the end."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console()
        if not self.console.is_terminal and console is None:
            self.console = Console(width=200)  # a pipe or a file: keep one line per resource
        self._live: Live | None = None
        self._state: RunnerState | None = None

    def start(self) -> None:
        if self.console.is_terminal:
            self._live = Live(console=self.console, refresh_per_second=4, transient=False)
            self._live.start()

    def update(self, state: RunnerState) -> None:
        self._state = state
        if self._live is not None:
            self._live.update(Group(table(state)))

    def event(self, key: str, event: Event) -> None:
        style = "yellow" if event.type == "Warning" else "dim"
        self.console.print(Text(f"{key}: {event.reason}: {event.message}", style=style))

    def say(self, text: str, error: bool = False) -> None:
        self.console.print(Text(text, style="bold red" if error else ""))

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
        elif self._state is not None:
            self.console.print(table(self._state))


class QuietView:
    """Only failures and what the user must act on."""

    def start(self) -> None:
        pass

    def update(self, state: RunnerState) -> None:
        pass

    def event(self, key: str, event: Event) -> None:
        if event.type == "Warning":
            print(f"{key}: {event.reason}: {event.message}", file=sys.stderr, flush=True)

    def say(self, text: str, error: bool = False) -> None:
        print(text, file=sys.stderr if error else sys.stdout, flush=True)

    def stop(self) -> None:
        pass


class JsonView:
    """One JSON object per line: `event`, `status` (a resource's phase changed) and `message`."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[str, int]] = {}

    def _emit(self, obj: dict[str, object]) -> None:
        print(json.dumps(obj, sort_keys=True), flush=True)

    def start(self) -> None:
        pass

    def update(self, state: RunnerState) -> None:
        for k in state.order:
            rs: ResourceState = state.resources[k]
            mark = (rs.status.phase.value, rs.status.progress.step if rs.status.progress else -1)
            if self._seen.get(k) != mark:
                self._seen[k] = mark
                self._emit({"type": "status", "resource": k, "status": rs.status.wire()})

    def event(self, key: str, event: Event) -> None:
        self._emit(
            {"type": "event", "resource": key, "event": event.type, "reason": event.reason, "message": event.message}
        )

    def say(self, text: str, error: bool = False) -> None:
        self._emit({"type": "message", "level": "error" if error else "info", "message": text})

    def stop(self) -> None:
        pass
