"""The chart's Argo CD health check (charts/lmforge/files/argocd-health.lua), run by a real Lua
runtime (lupa) the way Argo CD runs it: `obj` is the live object, the script returns `hs`. The
pod tests also run it against the statuses of a real pipeline (tests/pods/test_pipeline.py)."""

from __future__ import annotations

from typing import Any

import pytest
from support.argocd import health


def _obj(generation: int = 1, observed: int | None = 1, *conds: tuple[str, str, str]) -> dict[str, Any]:
    status: dict[str, Any] = {
        "conditions": [{"type": t, "status": s, "reason": r, "message": f"{r} details"} for t, s, r in conds]
    }
    if observed is not None:
        status["observedGeneration"] = observed
    return {"metadata": {"name": "x", "generation": generation}, "status": status if conds else None}


CASES = {
    "no-status-yet": (_obj(), "Progressing"),
    "completed": (_obj(1, 1, ("Ready", "True", "Completed")), "Healthy"),
    "serving": (_obj(2, 2, ("InputsReady", "True", "Completed"), ("Ready", "True", "Serving")), "Healthy"),
    "running": (_obj(1, 1, ("Ready", "False", "Running")), "Progressing"),
    "waiting-for-a-secret": (_obj(1, 1, ("Ready", "False", "WaitingForSecret")), "Progressing"),
    "stage-failed": (_obj(1, 1, ("Ready", "False", "StageFailed")), "Degraded"),
    "gate-failed-release": (_obj(1, 1, ("Ready", "False", "GateFailed")), "Degraded"),
    "invalid-spec": (_obj(1, 1, ("Ready", "False", "InvalidSpec")), "Degraded"),
    "store-unavailable": (_obj(1, 1, ("Ready", "Unknown", "StoreUnavailable")), "Degraded"),
    "status-older-than-spec": (_obj(3, 2, ("Ready", "True", "Completed")), "Progressing"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_health(name: str) -> None:
    obj, want = CASES[name]
    status, message = health(obj)
    assert status == want, (status, message)
    ready = [c for c in (obj["status"] or {}).get("conditions", []) if c["type"] == "Ready"]
    if ready and want != "Progressing":
        assert ready[0]["reason"] in message
