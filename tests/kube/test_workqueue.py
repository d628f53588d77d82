"""The operator's work queue: keys de-duplicated while queued, one reconcile per key at a time, a
key touched during its reconcile queued once more, and the queue wait reported (a metric)."""

from __future__ import annotations

import asyncio

from support.waiting import until

from lmforge.operator.workqueue import WorkQueue


def test_dedup_serialises_and_reports_waits() -> None:
    async def scenario() -> tuple[list[str], list[float], int]:
        calls: list[str] = []
        waits: list[float] = []
        gate = asyncio.Event()
        running: set[str] = set()
        overlap = 0

        async def handle(key: str) -> float | None:
            nonlocal overlap
            overlap += key in running
            running.add(key)
            calls.append(key)
            if key == "a" and calls.count("a") == 1:
                await gate.wait()  # held while "a" is touched again
            running.discard(key)
            return None

        queue: WorkQueue[str] = WorkQueue(handle, workers=4, on_wait=waits.append)
        queue.start()
        for key in ("a", "b", "b", "c"):
            queue.add(key)
        await until(lambda: "a" in calls and "c" in calls, what="a (held) and c started")
        queue.add("a")  # during a's reconcile: deferred, not run alongside
        queue.add("a")
        gate.set()
        await until(lambda: len(queue) == 0, what="the queue drained")  # nothing queued or running: no 3rd a
        await queue.stop()
        return calls, waits, overlap

    calls, waits, overlap = asyncio.run(scenario())
    assert sorted(calls) == ["a", "a", "b", "c"] and overlap == 0
    assert len(waits) == 4 and all(w >= 0 for w in waits)


def test_urgent_keys_go_before_routine_ones_and_a_routine_key_can_be_promoted() -> None:
    async def scenario() -> list[str]:
        calls: list[str] = []
        gate = asyncio.Event()

        async def handle(key: str) -> float | None:
            calls.append(key)
            if key == "first":
                await gate.wait()  # the only worker is busy while the others queue up
            return None

        queue: WorkQueue[str] = WorkQueue(handle, workers=1)
        queue.start()
        queue.add("first")
        await until(lambda: calls, what="the first key taken")
        queue.add("child-moved", urgent=False)
        queue.add("new-resource")
        queue.add("poll", urgent=False)
        queue.add("poll")  # promoted: runs once, in the urgent lane
        queue.add("new-resource", urgent=False)  # already urgent: stays so, not queued twice
        waiting_before = queue.urgent_waiting()  # the operator defers status patches meanwhile
        gate.set()
        await until(lambda: len(calls) >= 3, what="three keys taken")
        waiting_routine_only = queue.urgent_waiting()  # only "child-moved" (routine) may be left
        await until(lambda: len(queue) == 0, what="the queue drained")
        await queue.stop()
        assert waiting_before and not waiting_routine_only
        return calls

    assert asyncio.run(scenario()) == ["first", "new-resource", "poll", "child-moved"]
