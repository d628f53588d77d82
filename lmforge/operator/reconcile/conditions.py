"""Condition bookkeeping in the Kubernetes way: one condition per type, and `lastTransitionTime`
only moves when the status actually changes (so a no-op reconcile patches nothing)."""

from __future__ import annotations

from lmforge.api.meta import Condition, ConditionStatus, Status, now_rfc3339


def set_condition(
    status: Status,
    type_: str,
    value: bool | None,
    reason: str,
    message: str = "",
    generation: int | None = None,
    now: str | None = None,
) -> None:
    """Set (in place) the condition of `type_` on `status`."""
    new_status = {True: ConditionStatus.TRUE, False: ConditionStatus.FALSE, None: ConditionStatus.UNKNOWN}[value]
    old = status.condition(type_)
    when = now or now_rfc3339()
    if old is not None and old.status == new_status:
        when = old.last_transition_time
    updated = Condition(
        type=type_,
        status=new_status,
        reason=reason,
        message=message[:32768],
        last_transition_time=when,
        observed_generation=generation,
    )
    status.conditions = [c for c in status.conditions if c.type != type_] + [updated]
    status.conditions.sort(key=lambda c: _ORDER.get(c.type, 99))


_ORDER = {"Ready": 0, "Succeeded": 1, "InputsReady": 2, "GatePassed": 3}


def is_true(status: Status | None, type_: str) -> bool:
    """Whether the condition is present and True."""
    cond = status.condition(type_) if status else None
    return cond is not None and cond.status == ConditionStatus.TRUE


def is_false(status: Status | None, type_: str) -> bool:
    """Whether the condition is present and False."""
    cond = status.condition(type_) if status else None
    return cond is not None and cond.status == ConditionStatus.FALSE
