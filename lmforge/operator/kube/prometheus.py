"""Reads a canary's and its stable version's vLLM serving figures from Prometheus.

What is queried, per serve run (one Deployment), over the step's window:
- requests: `http_requests_total` of the OpenAI routes (`handler=~"/v1/.*"`), which vLLM's API
  server exports through prometheus-fastapi-instrumentator (status grouped as `2xx`, `4xx`, `5xx`);
- errors: the same with `status=~"5.."` (client errors are not the server's fault and do not count);
- p95 time to first token: `histogram_quantile(0.95, …vllm:time_to_first_token_seconds_bucket…)`.

Series are told apart by the pod's namespace and its run label: the chart's serving PodMonitor
copies the pod label `lmforge.io/run` onto every sample (`podTargetLabels`), which the Prometheus
Operator spells `lmforge_io_run`; a Prometheus configured by hand must do the same (docs/release.md).

Fail closed: a version with no `up` series is not scraped at all, so its silence would read as "no
errors"; that is reported as an error (the analysis then holds the step) rather than as zero traffic.
Never raises: every failure comes back in `CanaryMetrics.error`.
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request

from lmforge.operator.reconcile.analysis import CanaryMetrics, VersionMetrics

RUN_METRIC_LABEL = "lmforge_io_run"
"""The run label on serving samples (pod label `lmforge.io/run` via the PodMonitor's `podTargetLabels`)."""
TIMEOUT_S = 5.0
"""Per query: a slow Prometheus delays one reconcile, never the operator."""


class PrometheusError(Exception):
    """A query Prometheus did not answer, or answered with an error."""


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def selector(namespace: str, run: str, extra: str = "") -> str:
    """The label matchers of one serve run's samples."""
    return "{" + f'namespace="{_quote(namespace)}",{RUN_METRIC_LABEL}="{_quote(run)}"' + extra + "}"


def query(url: str, expr: str) -> float | None:
    """An instant query's single value: None for an empty vector or NaN (no data)."""
    qs = urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/api/v1/query?{qs}", timeout=TIMEOUT_S) as resp:
            body = json.load(resp)
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")[:300]
        raise PrometheusError(f"{url} answered {exc.code} to {expr!r}: {detail}") from exc
    except (OSError, ValueError) as exc:
        raise PrometheusError(f"{url} unreachable: {exc}") from exc
    if body.get("status") != "success":
        raise PrometheusError(f"{url} refused {expr!r}: {body.get('error', body)}")
    result = body["data"]["result"]
    if not result:
        return None
    value = float(result[0]["value"][1])
    return None if math.isnan(value) else value


def version_metrics(url: str, namespace: str, run: str, window_s: float) -> VersionMetrics:
    """One serve run's figures over the last `window_s` seconds."""
    if query(url, f"count(up{selector(namespace, run)})") is None:
        raise PrometheusError(
            f"Prometheus scrapes no target of run {run} in {namespace} (no `up` series with "
            f"{RUN_METRIC_LABEL}={run!r}; is the serving PodMonitor installed?)"
        )
    w = f"{max(1, round(window_s))}s"
    api = ',handler=~"/v1/.*"'
    server_errors = api + ',status=~"5.."'
    requests = query(url, f"sum(increase(http_requests_total{selector(namespace, run, api)}[{w}]))")
    errors = query(url, f"sum(increase(http_requests_total{selector(namespace, run, server_errors)}[{w}]))")
    ttft = query(
        url,
        "histogram_quantile(0.95, sum by (le) "
        f"(rate(vllm:time_to_first_token_seconds_bucket{selector(namespace, run)}[{w}])))",
    )
    return VersionMetrics(requests=requests or 0.0, errors=errors or 0.0, ttft_p95_s=ttft)


def canary_metrics(url: str, namespace: str, stable_run: str, canary_run: str, window_s: float) -> CanaryMetrics:
    """Both versions' figures over the same window; never raises (an error is in `.error`)."""
    try:
        stable = version_metrics(url, namespace, stable_run, window_s)
        canary = version_metrics(url, namespace, canary_run, window_s)
    except PrometheusError as exc:
        return CanaryMetrics(stable=None, canary=None, window_s=window_s, error=str(exc))
    return CanaryMetrics(stable=stable, canary=canary, window_s=window_s)
