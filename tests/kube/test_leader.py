"""The Lease rule as named table cases: who creates, renews, waits for or takes over the Lease."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from lmforge.operator.leader import MICRO, Action, decide, lease_body

NOW = datetime(2026, 12, 2, 1, 0, 0, tzinfo=UTC)


def _lease(holder: str | None, renewed_ago: float | None, duration: int = 15) -> dict[str, Any]:
    spec: dict[str, Any] = {"leaseDurationSeconds": duration}
    if holder is not None:
        spec["holderIdentity"] = holder
    if renewed_ago is not None:
        spec["renewTime"] = (NOW - timedelta(seconds=renewed_ago)).strftime(MICRO)
    return {"metadata": {"name": "l", "resourceVersion": "7"}, "spec": spec}


@dataclass(frozen=True)
class Case:
    name: str
    lease: dict[str, Any] | None
    action: Action
    wait_s: float = 0.0


CASES = [
    Case("no-lease-creates-it", None, Action.CREATE),
    Case("ours-is-renewed-even-when-expired", _lease("me", 60), Action.RENEW),
    Case("held-and-fresh-waits-until-expiry", _lease("other", 5), Action.WAIT, 10.0),
    Case("held-but-expired-is-taken", _lease("other", 15), Action.TAKE),
    Case("released-is-taken", _lease(None, 1), Action.TAKE),
    Case("never-renewed-is-taken", _lease("other", None), Action.TAKE),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_decide(case: Case) -> None:
    decision = decide(case.lease, "me", NOW)
    assert decision.action is case.action
    assert decision.wait_s == pytest.approx(case.wait_s)


def test_take_over_counts_a_transition_and_keeps_optimistic_concurrency() -> None:
    before = _lease("other", 30)
    before["spec"]["leaseTransitions"] = 2
    body = lease_body("l", "ns", "me", NOW, 15, before, taken=True)
    assert body["metadata"]["resourceVersion"] == "7"  # a concurrent writer gets 409, not a silent overwrite
    assert body["spec"]["holderIdentity"] == "me" and body["spec"]["leaseTransitions"] == 3
    assert body["spec"]["acquireTime"] == body["spec"]["renewTime"] == NOW.strftime(MICRO)


def test_renewal_keeps_the_acquire_time() -> None:
    before = _lease("me", 4)
    before["spec"]["acquireTime"] = "2026-12-02T00:00:00.000000Z"
    body = lease_body("l", "ns", "me", NOW, 15, before, taken=False)
    assert body["spec"]["acquireTime"] == "2026-12-02T00:00:00.000000Z"
    assert body["spec"]["leaseTransitions"] == 0
    first = lease_body("l", "ns", "me", NOW, 15, None, taken=True)
    assert "resourceVersion" not in first["metadata"] and first["spec"]["leaseTransitions"] == 0
