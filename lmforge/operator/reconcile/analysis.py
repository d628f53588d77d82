"""The canary's metrics verdict: is the new version no worse than the stable one on live traffic?

Placeholder bodies with the agreed signatures (the lead replaces them); pure, no I/O."""

from __future__ import annotations

from dataclasses import dataclass

from lmforge.operator.reconcile.gate import Verdict


@dataclass(frozen=True)
class VersionMetrics:
    requests: float
    """OpenAI API requests answered in the window."""
    errors: float
    """Of them, 5xx."""
    ttft_p95_s: float | None
    """p95 time to first token, None without data."""

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests > 0 else None


@dataclass(frozen=True)
class CanaryMetrics:
    stable: VersionMetrics | None
    canary: VersionMetrics | None
    window_s: float
    error: str | None = None
    """Why there are no figures (Prometheus unreachable, not configured)."""


def judge_canary(
    m: CanaryMetrics | None, *, max_error_rate: float, max_ttft_ratio: float, min_requests: int
) -> tuple[Verdict, str]:
    """PASSED, FAILED or PENDING (not enough data), with the figures in the message."""
    if m is None or m.error is not None or m.canary is None:
        return Verdict.PENDING, f"no canary metrics: {m.error if m is not None and m.error else 'no data yet'}"
    c = m.canary
    if c.requests < max(min_requests, 1):
        return Verdict.PENDING, f"canary answered {c.requests:g} requests, fewer than {max(min_requests, 1)}"
    rate = c.error_rate or 0.0
    if rate > max_error_rate:
        return Verdict.FAILED, f"canary error rate {rate:.3f} > {max_error_rate:g} ({c.errors:g}/{c.requests:g})"
    s = m.stable
    if c.ttft_p95_s is not None and s is not None and s.ttft_p95_s:
        ratio = c.ttft_p95_s / s.ttft_p95_s
        if ratio > max_ttft_ratio:
            return Verdict.FAILED, f"canary p95 TTFT {c.ttft_p95_s:.3f}s is {ratio:.2f}x stable's > {max_ttft_ratio:g}x"
    return Verdict.PASSED, f"canary error rate {rate:.3f} over {c.requests:g} requests"
