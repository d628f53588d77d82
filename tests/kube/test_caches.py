"""The controller's caches as named table cases: what each remembers, when it forgets, and that a
deleted resource leaves nothing behind (in the caches module and through the handlers' DELETED
event). No cluster: the caches are plain data, the handler tests use the controller's methods."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest

from lmforge.operator.caches import ControllerCaches, Key
from lmforge.operator.handlers import Controller
from lmforge.operator.kube.meta import GROUP_PREFIX, RUN_LABEL
from lmforge.operator.settings import Settings
from lmforge.store import open_store

D: Key = ("ns", "Dataset", "d")
P: Key = ("ns", "PretrainJob", "p")
OTHER: Key = ("ns", "Dataset", "other")
JOB = ("ns", "Job", "d-run-1")
CONFIG = ("ns", "ConfigMap", "d-run-1-spec")


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def fill(c: ControllerCaches, key: Key) -> None:
    """Put an entry of `key` into every cache keyed by resource."""
    c.record_references(key, [OTHER])
    c.record_written(key, 1, {"phase": "Running"})
    c.record_patched(key, "7", {"phase": "Running"})
    c.summary_changed(key, ("Running",))
    c.record_applied(key, (key[0], "Job", f"{key[2]}-run-1"), "h1")
    c.count_secret_wait(key)
    c.record_failure_reason(key, f"{key[2]}-run-1", "OOMKilled")


@dataclass(frozen=True)
class Case:
    id: str
    steps: Callable[[ControllerCaches, Clock], Any]
    """Acts on fresh caches; returns what `want` must equal."""
    want: Any


CASES = [
    # references → dependents
    Case("dependents-are-the-referrers", lambda c, _: (c.record_references(P, [D]), c.dependents(D))[1], [P]),
    Case(
        "a-new-spec-replaces-old-references",
        lambda c, _: (c.record_references(P, [D]), c.record_references(P, [OTHER]), c.dependents(D))[2],
        [],
    ),
    Case("nothing-references-an-unknown-key", lambda c, _: c.dependents(D), []),
    # our own status writes
    Case(
        "the-echo-of-our-write-is-ours",
        lambda c, _: (c.record_written(D, 2, {"phase": "Running"}), c.is_own_write(D, 2, {"phase": "Running"}))[1],
        True,
    ),
    Case(
        "a-new-generation-is-not-our-echo",
        lambda c, _: (c.record_written(D, 2, {"phase": "Running"}), c.is_own_write(D, 3, {"phase": "Running"}))[1],
        False,
    ),
    Case(
        "a-status-someone-else-wrote-is-not-our-echo",
        lambda c, _: (c.record_written(D, 2, {"phase": "Running"}), c.is_own_write(D, 2, {"phase": "Failed"}))[1],
        False,
    ),
    Case(
        "patched-status-stands-in-while-the-index-is-behind",
        lambda c, _: (c.record_patched(D, "7", {"phase": "Running"}), c.pending_status(D, "7"))[1],
        {"phase": "Running"},
    ),
    Case(
        "a-newer-body-ends-the-stand-in-for-good",
        lambda c, _: (
            c.record_patched(D, "7", {"phase": "Running"}),
            c.pending_status(D, "8"),
            c.pending_status(D, "7"),
            c.holding(D),
        )[2:],
        (None, []),
    ),
    # summaries
    Case("first-summary-is-a-change", lambda c, _: c.summary_changed(D, ("Running",)), True),
    Case(
        "same-summary-is-no-change",
        lambda c, _: (c.summary_changed(D, ("Running",)), c.summary_changed(D, ("Running",)))[1],
        False,
    ),
    Case(
        "other-summary-is-a-change",
        lambda c, _: (c.summary_changed(D, ("Running",)), c.summary_changed(D, ("Succeeded",)))[1],
        True,
    ),
    # applied children
    Case(
        "applied-hash-is-remembered-per-owner",
        lambda c, _: (c.record_applied(D, JOB, "h1"), c.applied_hash(D, JOB), c.applied_hash(P, JOB))[1:],
        ("h1", None),
    ),
    Case(
        "re-applied-child-keeps-the-new-hash",
        lambda c, _: (c.record_applied(D, JOB, "h1"), c.record_applied(D, JOB, "h2"), c.applied_hash(D, JOB))[2],
        "h2",
    ),
    Case(
        "a-deleted-run-forgets-only-its-children",
        lambda c, _: (
            c.record_applied(D, JOB, "h1"),
            c.record_applied(D, CONFIG, "h2"),
            c.forget_run(D, "d-run-1", [JOB]),
            c.applied_hash(D, JOB),
            c.applied_hash(D, CONFIG),
        )[3:],
        (None, "h2"),
    ),
    Case(
        "forgetting-the-last-child-drops-the-owner-entry",
        lambda c, _: (c.record_applied(D, JOB, "h1"), c.forget_run(D, "d-run-1", [JOB]), c.holding(D))[2],
        [],
    ),
    # waits
    Case("secret-waits-count-up", lambda c, _: [c.count_secret_wait(D) for _ in range(3)], [0, 1, 2]),
    Case(
        "cleared-waits-start-again",
        lambda c, _: (c.count_secret_wait(D), c.count_secret_wait(D), c.clear_secret_waits(D), c.count_secret_wait(D))[
            3
        ],
        0,
    ),
    # Secrets
    Case(
        "a-secret-seen-is-fresh-within-the-ttl",
        lambda c, clock: (
            c.record_secret("ns", "hf", frozenset({"token"})),
            setattr(clock, "now", clock.now + 29),
            c.secret_keys("ns", "hf"),
        )[2],
        frozenset({"token"}),
    ),
    Case(
        "a-secret-seen-too-long-ago-is-gone",
        lambda c, clock: (
            c.record_secret("ns", "hf", frozenset({"token"})),
            setattr(clock, "now", clock.now + 30),
            c.secret_keys("ns", "hf"),
            c.sizes()["secrets"],
        )[2:],
        (None, 0),
    ),
    Case(
        "a-secret-of-another-namespace-is-not-seen",
        lambda c, _: (c.record_secret("ns", "hf", frozenset()), c.secret_keys("other", "hf"))[1],
        None,
    ),
    Case(
        "forget-sweeps-expired-secrets",
        lambda c, clock: (
            c.record_secret("ns", "old", frozenset()),
            setattr(clock, "now", clock.now + 31),
            c.record_secret("ns", "new", frozenset()),
            c.forget(D),
            c.sizes()["secrets"],
        )[4],
        1,
    ),
    # failure reasons
    Case(
        "failure-reason-is-kept-per-run",
        lambda c, _: (
            c.record_failure_reason(D, "d-run-1", "OOMKilled"),
            c.failure_reason(D, "d-run-1"),
            c.failure_reason(D, "d-run-2"),
        )[1:],
        ("OOMKilled", None),
    ),
    Case(
        "an-empty-reason-is-still-a-reason-found",
        lambda c, _: (c.record_failure_reason(D, "d-run-1", ""), c.failure_reason(D, "d-run-1"))[1],
        "",
    ),
    Case(
        "a-deleted-run-forgets-its-failure-reason",
        lambda c, _: (
            c.record_failure_reason(D, "d-run-1", "x"),
            c.forget_run(D, "d-run-1", []),
            c.failure_reason(D, "d-run-1"),
        )[2],
        None,
    ),
    # delete
    Case(
        "after-delete-nothing-of-the-key-remains",
        lambda c, _: (
            fill(c, D),
            c.forget(D),
            c.holding(D),
            c.applied_hash(D, ("ns", "Job", "d-run-1")),
            c.failure_reason(D, "d-run-1"),
            c.pending_status(D, "7"),
        )[2:],
        ([], None, None, None),
    ),
    Case(
        "delete-leaves-other-resources-alone",
        lambda c, _: (fill(c, D), fill(c, P), c.forget(D), sorted(c.holding(P)))[3],
        ["applied", "failure_reasons", "refs", "secret_waits", "seen", "unseen", "written"],
    ),
    Case(
        "delete-drops-the-references-it-made",
        lambda c, _: (c.record_references(P, [D]), c.forget(P), c.dependents(D))[2],
        [],
    ),
    Case(
        "churn-leaves-nothing-behind",
        lambda c, _: (
            [(fill(c, ("ns", "Dataset", f"d{i}")), c.forget(("ns", "Dataset", f"d{i}"))) for i in range(100)],
            {k: v for k, v in c.sizes().items() if v},
        )[1],
        {},
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_caches(case: Case) -> None:
    clock = Clock()
    assert case.steps(ControllerCaches(secret_ttl=30.0, clock=clock), clock) == case.want


def test_fill_reaches_every_cache_keyed_by_resource() -> None:
    """Guards the delete test above: `fill` must touch every per-resource cache `holding` knows."""
    c = ControllerCaches()
    fill(c, D)
    assert sorted(c.holding(D)) == ["applied", "failure_reasons", "refs", "secret_waits", "seen", "unseen", "written"]


# ---------------------------------------------------------------------- through the handlers


def _controller(tmp_path: Path) -> Controller:
    return Controller(Settings(store=str(tmp_path / "store")), cast(Any, object()), open_store(str(tmp_path / "store")))


def _body(key: Key, status: dict[str, Any] | None = None, **labels: str) -> dict[str, Any]:
    ns, kind, name = key
    return {
        "apiVersion": "lmforge.io/v1alpha1",
        "kind": kind,
        "metadata": {"namespace": ns, "name": name, "generation": 1, "resourceVersion": "7", "labels": labels},
        "status": status or {},
    }


def _child(owner: Key, kind: str, name: str) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": kind,
        "metadata": {
            "namespace": owner[0],
            "name": name,
            "labels": {f"{GROUP_PREFIX}/{owner[1].lower()}": owner[2], RUN_LABEL: name},
        },
    }


def test_a_deleted_event_prunes_every_cache_of_the_resource(tmp_path: Path) -> None:
    async def scenario() -> None:
        ctl = _controller(tmp_path)
        fill(ctl.caches, D)
        ctl.caches.record_references(P, [D])
        ctl.on_resource_event("Dataset", "MODIFIED", _body(D, {"phase": "Succeeded"}))
        ctl.on_resource_event("Dataset", "DELETED", _body(D, {"phase": "Succeeded"}))
        assert ctl.caches.holding(D) == []
        assert ctl.caches.holding(P) == ["refs"]  # the dependent keeps its own
        assert set(ctl.queue._queued) == {D, P}  # the dependent is looked at again

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("event", "applied_after"),
    [
        pytest.param("MODIFIED", "h1", id="a-child-that-moved-stays-applied"),
        pytest.param("DELETED", None, id="a-deleted-child-is-applied-again"),
    ],
)
def test_child_events_prune_only_deleted_children(tmp_path: Path, event: str, applied_after: str | None) -> None:
    async def scenario() -> None:
        ctl = _controller(tmp_path)
        ctl.caches.record_applied(D, JOB, "h1")
        ctl.caches.record_applied(D, CONFIG, "h2")
        ctl.caches.record_failure_reason(D, "d-run-1", "OOMKilled")
        ctl.on_child_event(_child(D, "Job", "d-run-1"), event)
        assert ctl.caches.applied_hash(D, JOB) == applied_after
        assert ctl.caches.applied_hash(D, CONFIG) == "h2"  # not watched: still ours, still applied
        assert (ctl.caches.failure_reason(D, "d-run-1") is None) == (event == "DELETED")
        assert D in ctl.queue._queued

    asyncio.run(scenario())
