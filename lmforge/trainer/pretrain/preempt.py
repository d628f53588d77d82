"""Graceful stop on SIGTERM/SIGINT: finish the step, checkpoint, exit so that a retry resumes.

Kubernetes evicts a pod with SIGTERM (then SIGKILL after the grace period); `lmforge run` stops a
stage with SIGINT, then SIGTERM; torchrun forwards the signal it receives to every worker. The handler
only raises a flag: the training loop all-reduces it once per optimizer step (any rank asked → all
stop, so the checkpoint save stays collective), saves a checkpoint at that step and fails with a
retryable error. Repeated signals are ignored — a process group often gets the signal both directly
and forwarded by torchrun, and an abort in the middle of the save would waste it; SIGKILL remains
the hard stop.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
    """Set by a signal handler (or directly, e.g. in tests); read once per optimizer step."""

    def __init__(self) -> None:
        self.signal: int | None = None

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def request(self, signum: int) -> None:
        if self.signal is None:
            self.signal = signum

    def name(self) -> str:
        return signal.Signals(self.signal).name if self.signal is not None else "request"


@contextmanager
def stop_on_signals(stop: StopRequest) -> Iterator[StopRequest]:
    """Route SIGTERM/SIGINT to `stop` for the duration (main thread only; elsewhere a no-op, since
    Python delivers signals to the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.request(signum)

    previous: dict[int, Any] = {s: signal.signal(s, on_signal) for s in SIGNALS}
    try:
        yield stop
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
