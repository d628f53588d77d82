"""A canary's live-traffic analysis: is the new version worse than the stable one, judging by what
its servers answered in the last step?

The figures come from Prometheus (see `operator/kube/prometheus.py`), read for each version over the
same window: the OpenAI API requests each version answered, how many of them were server errors
(HTTP 5xx), and each version's p95 time to first token. The verdict compares the canary with fixed
limits (error rate) and with the stable version measured at the same time (TTFT ratio), the way
Argo Rollouts' and Flagger's analyses do: a relative bound keeps a slow machine or a busy hour from
failing every canary, an absolute one keeps a broken canary from passing because the stable is
broken too.

Pure: numbers in, verdict out; the I/O is the backend's.
"""

from __future__ import annotations

from dataclasses import dataclass

from lmforge.operator.reconcile.gate import Verdict


@dataclass(frozen=True)
class VersionMetrics:
    """One version's serving figures over the analysis window."""

    requests: float
    """OpenAI API requests it answered in the window (any status)."""
    errors: float
    """Of them, server errors (HTTP 5xx)."""
    ttft_p95_s: float | None
    """p95 time to first token in seconds; None without a finished request in the window."""

    @property
    def error_rate(self) -> float | None:
        """Share of the window's requests that were server errors; None without requests."""
        return self.errors / self.requests if self.requests > 0 else None


@dataclass(frozen=True)
class CanaryMetrics:
    """Both versions' figures over the same window, or why there are none."""

    stable: VersionMetrics | None
    canary: VersionMetrics | None
    window_s: float
    error: str | None = None
    """Why there are no figures (Prometheus unreachable or not configured, a query refused)."""


def _fmt(x: float | None, unit: str = "") -> str:
    return "n/a" if x is None else f"{x:.3g}{unit}"


def judge_canary(
    m: CanaryMetrics | None, *, max_error_rate: float, max_ttft_ratio: float, min_requests: int
) -> tuple[Verdict, str]:
    """The verdict on the canary's step that just ended, with the figures it rests on.

    - FAILED: the canary's 5xx share exceeds `max_error_rate`, or its p95 time to first token exceeds
      `max_ttft_ratio` × the stable's (both measured; a canary answering while the stable has no TTFT
      sample is not compared on TTFT).
    - PENDING: no figures (Prometheus down: holding is safer than promoting blind, and the stable
      keeps most of the traffic meanwhile), or the canary answered fewer than `min_requests`.
    - PASSED otherwise. With `min_requests` 0 and no traffic at all, there is nothing to hold
      against: the step passes on time alone, and the message says so."""
    if m is None:
        return Verdict.PENDING, "no canary metrics yet"
    if m.error is not None:
        return Verdict.PENDING, f"canary metrics unavailable: {m.error}"
    canary = m.canary or VersionMetrics(requests=0.0, errors=0.0, ttft_p95_s=None)
    stable = m.stable
    window = f"last {m.window_s:g}s"
    if canary.requests < min_requests:
        return (
            Verdict.PENDING,
            f"canary answered {canary.requests:.0f} requests in the {window}, fewer than the {min_requests} needed",
        )
    rate = canary.error_rate
    figures = (
        f"canary: {canary.requests:.0f} requests, {canary.errors:.0f} server errors, error rate {_fmt(rate)}, "
        f"p95 TTFT {_fmt(canary.ttft_p95_s, 's')}; "
        f"stable: {_fmt(stable.requests if stable else None)} requests, "
        f"error rate {_fmt(stable.error_rate if stable else None)}, "
        f"p95 TTFT {_fmt(stable.ttft_p95_s if stable else None, 's')} ({window})"
    )
    if rate is not None and rate > max_error_rate:
        return Verdict.FAILED, f"canary error rate {rate:.3g} > {max_error_rate:g}; {figures}"
    stable_ttft = stable.ttft_p95_s if stable else None
    if canary.ttft_p95_s is not None and stable_ttft is not None and stable_ttft > 0:
        ratio = canary.ttft_p95_s / stable_ttft
        if ratio > max_ttft_ratio:
            return Verdict.FAILED, f"canary p95 TTFT {ratio:.3g}× the stable's > {max_ttft_ratio:g}×; {figures}"
    if canary.requests == 0:
        return Verdict.PASSED, f"no traffic reached the canary in the {window}: passed on time alone; {figures}"
    return Verdict.PASSED, figures
