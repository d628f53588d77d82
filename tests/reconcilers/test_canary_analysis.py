"""The canary's live-traffic verdict as named table cases: figures in, verdict and message out."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from lmforge.operator.reconcile.analysis import CanaryMetrics, VersionMetrics, judge_canary
from lmforge.operator.reconcile.gate import Verdict

GOOD = VersionMetrics(requests=200, errors=0, ttft_p95_s=0.10)
LIMITS = {"max_error_rate": 0.01, "max_ttft_ratio": 2.0, "min_requests": 10}


@dataclass(frozen=True)
class Case:
    name: str
    metrics: CanaryMetrics | None
    want: Verdict
    says: str
    limits: dict[str, float] | None = None


def _m(canary: VersionMetrics | None, stable: VersionMetrics | None = GOOD) -> CanaryMetrics:
    return CanaryMetrics(stable=stable, canary=canary, window_s=60)


CASES = [
    Case("healthy canary passes", _m(VersionMetrics(20, 0, 0.12)), Verdict.PASSED, "canary: 20 requests"),
    Case(
        "error rate over the limit fails",
        _m(VersionMetrics(20, 1, 0.12)),
        Verdict.FAILED,
        "canary error rate 0.05 > 0.01",
    ),
    Case("error rate at the limit passes", _m(VersionMetrics(100, 1, 0.12)), Verdict.PASSED, "error rate 0.01"),
    Case(
        "slow first token fails against the stable",
        _m(VersionMetrics(20, 0, 0.25)),
        Verdict.FAILED,
        "p95 TTFT 2.5× the stable's > 2×",
    ),
    Case(
        "a slow stable makes a slow canary no worse",
        _m(VersionMetrics(20, 0, 0.9), VersionMetrics(200, 0, 0.5)),
        Verdict.PASSED,
        "p95 TTFT 0.9s",
    ),
    Case(
        "a broken stable does not excuse a broken canary",
        _m(VersionMetrics(20, 10, 0.1), VersionMetrics(200, 100, 0.1)),
        Verdict.FAILED,
        "canary error rate 0.5",
    ),
    Case(
        "no TTFT on the stable: TTFT not compared",
        _m(VersionMetrics(20, 0, 5.0), VersionMetrics(0, 0, None)),
        Verdict.PASSED,
        "stable: 0 requests",
    ),
    Case(
        "too few canary requests holds",
        _m(VersionMetrics(3, 0, 0.1)),
        Verdict.PENDING,
        "answered 3 requests in the last 60s, fewer than the 10 needed",
    ),
    Case(
        "too few requests holds even if they all failed",
        _m(VersionMetrics(3, 3, 0.1)),
        Verdict.PENDING,
        "fewer than the 10 needed",
    ),
    Case(
        "Prometheus down holds the step",
        CanaryMetrics(None, None, 60, error="http://prom:9090 unreachable: refused"),
        Verdict.PENDING,
        "canary metrics unavailable: http://prom:9090 unreachable",
    ),
    Case("no figures yet holds", None, Verdict.PENDING, "no canary metrics yet"),
    Case(
        "no traffic and no minimum passes on time alone",
        _m(None),
        Verdict.PASSED,
        "passed on time alone",
        {"max_error_rate": 0.01, "max_ttft_ratio": 2.0, "min_requests": 0},
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_canary_verdict(case: Case) -> None:
    limits = case.limits or LIMITS
    verdict, message = judge_canary(
        case.metrics,
        max_error_rate=limits["max_error_rate"],
        max_ttft_ratio=limits["max_ttft_ratio"],
        min_requests=int(limits["min_requests"]),
    )
    assert verdict is case.want, message
    assert case.says in message, message


def test_error_rate_needs_requests() -> None:
    assert VersionMetrics(0, 0, None).error_rate is None
    assert VersionMetrics(4, 1, None).error_rate == 0.25
