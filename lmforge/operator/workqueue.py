"""A rate-limited work queue of resource keys, in the controller-runtime manner.

Why: kopf calls a handler per watch event, but a resource must be reconciled as a whole, once at a
time, however many events (its own, its children's, its inputs') arrive meanwhile. Keys are
de-duplicated while queued; a key that changes while being reconciled is queued again when that
reconcile ends; delayed re-adds implement `requeue_after` and per-key exponential backoff on errors.

Two lanes: an *urgent* add (a resource created or changed, an input that became Ready: work that
creates children) goes before the *routine* ones (a child's status moved, a progress poll, a retry),
so 200 resources applied at once get their Jobs before anyone re-reads the Jobs already made.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
log = logging.getLogger(__name__)


class WorkQueue(Generic[K]):
    """`add`/`add_after` from anywhere on the loop; `workers` tasks run `handle(key)`."""

    def __init__(
        self,
        handle: Callable[[K], Awaitable[float | None]],
        workers: int,
        base_backoff: float = 0.5,
        max_backoff: float = 60.0,
        on_wait: Callable[[float], None] | None = None,
    ) -> None:
        self._handle = handle
        self._on_wait = on_wait
        """Told how long each key sat queued before a worker took it (seconds; a metric)."""
        self._queue: asyncio.PriorityQueue[tuple[int, int, K]] = asyncio.PriorityQueue()
        """(lane: 0 urgent, 1 routine; arrival order; key). A key promoted to urgent leaves a stale
        routine entry behind, skipped when popped."""
        self._seq = itertools.count()
        self._queued: dict[K, tuple[float, int]] = {}
        """Queued keys → (when queued, monotonic; lane)."""
        self._active: set[K] = set()
        self._dirty: dict[K, bool] = {}
        """Keys touched during their reconcile → whether any of those touches was urgent."""
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

    def add(self, key: K, urgent: bool = True) -> None:
        """Queue `key` now (no-op if already queued in the same or a faster lane; deferred if being
        reconciled)."""
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        lane = 0 if urgent else 1
        if key in self._active:
            self._dirty[key] = self._dirty.get(key, False) or urgent
            return
        queued = self._queued.get(key)
        if queued is not None and queued[1] <= lane:
            return
        self._queued[key] = (queued[0] if queued else time.monotonic(), lane)
        self._queue.put_nowait((lane, next(self._seq), key))

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
        self.add(key, urgent=False)

    def urgent_waiting(self) -> bool:
        """Whether an urgent key is queued (work that creates children is waiting for a worker)."""
        return any(lane == 0 for _, lane in self._queued.values())

    def __len__(self) -> int:
        return len(self._queued) + len(self._active)

    async def _work(self) -> None:
        while True:
            lane, _, key = await self._queue.get()
            queued = self._queued.get(key)
            if queued is None or queued[1] != lane:
                continue  # stale: the key was promoted to the urgent lane, or already taken
            del self._queued[key]
            if self._on_wait is not None:
                self._on_wait(time.monotonic() - queued[0])
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
                self.add(key, urgent=self._dirty.pop(key))
            elif requeue is not None:
                self.add_after(key, requeue)
