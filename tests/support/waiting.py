"""Waiting in tests: `eventually` (poll until true, with a deadline) and `consistently` (poll for a
while, failing the moment it turns false) — Gomega's pair, so no test proves anything with a bare sleep.

Every test waits through these two; tests/cluster/controlplane.py's `eventually` is this one with the
cluster's defaults (every exception is "not yet", a dead component aborts, TimeoutError past the deadline).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def eventually(
    check: Callable[[], T | None],
    *,
    timeout: float = 30.0,
    interval: float = 0.05,
    what: str = "condition",
    tick: Callable[[], None] | None = None,
    ignoring: tuple[type[BaseException], ...] = (),
    abort: Callable[[], str | None] | None = None,
    abort_error: Callable[[str], BaseException] = AssertionError,
    timeout_error: Callable[[str], BaseException] = AssertionError,
) -> T:
    """Poll `check` (after `tick`, if given) until it returns something truthy, and return that.

    Exceptions of the `ignoring` types count as "not yet" (a server still starting); any other
    propagates at once. `abort`, asked each round, fails fast with its message (`abort_error`), e.g.
    when the process being waited on died. Past `timeout` seconds `timeout_error` names `what` and
    the last value.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        if tick is not None:
            tick()
        try:
            value = check()
        except ignoring as exc:
            last = exc
        else:
            if value:
                return value
            last = value
        reason = abort() if abort is not None else None
        if reason:
            raise abort_error(f"while waiting for {what}: {reason}")
        if time.monotonic() > deadline:
            raise timeout_error(f"timed out after {timeout:g} s waiting for {what} (last: {last!r})")
        time.sleep(interval)


def consistently(
    check: Callable[[], object], *, duration: float, interval: float = 0.1, what: str = "condition"
) -> None:
    """Poll `check` for `duration` seconds; fail the first time it is falsy (a negative, proven by
    watching the whole window rather than looking once after a sleep)."""
    deadline = time.monotonic() + duration
    polls = 0
    while True:
        value = check()
        polls += 1
        if not value:
            raise AssertionError(f"{what} stopped holding after {polls} checks (got {value!r})")
        if time.monotonic() >= deadline:
            return
        time.sleep(interval)


async def until(check: Callable[[], object], *, timeout: float = 5.0, what: str = "condition") -> None:
    """`eventually` for code on an asyncio loop: yield to the loop until `check()` is truthy, failing
    after `timeout` seconds instead of spinning forever."""
    import asyncio

    async def poll() -> None:
        while not check():
            await asyncio.sleep(0.001)

    try:
        await asyncio.wait_for(poll(), timeout)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout:g} s waiting for {what}") from None
