"""A rate-limited work queue of resource keys, in the controller-runtime manner.

Why: kopf calls a handler per watch event, but a resource must be reconciled as a whole, once at a
time, however many events (its own, its children's, its inputs') arrive meanwhile. Keys are
de-duplicated while queued; a key that changes while being reconciled is queued again when that
reconcile ends; delayed re-adds implement `requeue_after` and per-key exponential backoff on errors.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
log = logging.getLogger(__name__)


class WorkQueue(Generic[K]):
    """`add`/`add_after` from anywhere on the loop; `workers` tasks run `handle(key)`."""

    def __init__(self, handle: Callable[[K], Awaitable[float | None]], workers: int,
                 base_backoff: float = 0.5, max_backoff: float = 60.0,
                 on_wait: Callable[[float], None] | None = None) -> None:
        self._handle = handle
        self._on_wait = on_wait
        """Told how long each key sat queued before a worker took it (seconds; a metric)."""
        self._queue: asyncio.Queue[K] = asyncio.Queue()
        self._queued: dict[K, float] = {}
        """Queued keys → when they were queued (monotonic)."""
        self._active: set[K] = set()
        self._dirty: set[K] = set()
        self._timers: dict[K, asyncio.TimerHandle] = {}
        self._failures: dict[K, int] = {}
        self._workers = workers
        self._tasks: list[asyncio.Task[None]] = []
        self._base, self._max = base_backoff, max_backoff

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._work(), name=f"lmforge-reconcile-{i}") for i in range(self._workers)]

    async def stop(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def add(self, key: K) -> None:
        """Queue `key` now (no-op if already queued; deferred if being reconciled)."""
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        if key in self._active:
            self._dirty.add(key)
        elif key not in self._queued:
            self._queued[key] = time.monotonic()
            self._queue.put_nowait(key)

    def add_after(self, key: K, delay: float) -> None:
        """Queue `key` after `delay` seconds unless an earlier add already is pending."""
        loop = asyncio.get_running_loop()
        existing = self._timers.get(key)
        if existing is not None and existing.when() <= loop.time() + delay:
            return
        if existing is not None:
            existing.cancel()
        self._timers[key] = loop.call_later(delay, self._fire, key)

    def _fire(self, key: K) -> None:
        self._timers.pop(key, None)
        self.add(key)

    def __len__(self) -> int:
        return len(self._queued) + len(self._active)

    async def _work(self) -> None:
        while True:
            key = await self._queue.get()
            since = self._queued.pop(key, None)
            if since is not None and self._on_wait is not None:
                self._on_wait(time.monotonic() - since)
            self._active.add(key)
            try:
                requeue = await self._handle(key)
                self._failures.pop(key, None)
            except asyncio.CancelledError:
                raise
            except Exception:
                n = self._failures[key] = self._failures.get(key, 0) + 1
                requeue = min(self._max, self._base * 2 ** (n - 1))
                log.exception("reconciling %s failed (attempt %d); retrying in %.1f s", key, n, requeue)
            finally:
                self._active.discard(key)
            if key in self._dirty:
                self._dirty.discard(key)
                self.add(key)
            elif requeue is not None:
                self.add_after(key, requeue)
