"""The canary analysis reads real figures: a real Prometheus scrapes a real vLLM server (the stable
version) and a server whose API fails half its requests (the canary), each labelled as the chart's
serving PodMonitor labels serving pods, and `canary_metrics` must see the difference.

The failing "canary" is a plain exporter of the two series vLLM's server exports
(`http_requests_total`, `vllm:time_to_first_token_seconds`), written in the text format by hand:
making a real vLLM answer 5xx on purpose is not possible, what is under test here is the queries,
not vLLM, and prometheus_client would hand Prometheus 2.42 (which asks for OpenMetrics) the
histogram's name with its colon escaped."""

from __future__ import annotations

import http.server
import json
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from support.prometheus import free_port, prometheus
from support.tiny import make_model
from support.vllm import vllm_server
from support.waiting import eventually

from lmforge.operator.kube.prometheus import RUN_METRIC_LABEL, canary_metrics
from lmforge.operator.reconcile.analysis import CanaryMetrics, judge_canary
from lmforge.operator.reconcile.gate import Verdict

pytestmark = [pytest.mark.slow, pytest.mark.ml]

NS = "team-a"


def _job(name: str, port: int, run: str) -> str:
    labels = json.dumps({"namespace": NS, RUN_METRIC_LABEL: run})
    return (
        f"  - job_name: {name}\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n        labels: {labels}\n"
    )


class FailingServer(http.server.ThreadingHTTPServer):
    """Exports what a server failing half its requests, each slow to its first token, would."""

    ok = 0
    failed = 0
    slow = 0
    """Requests whose first token took 3 s."""

    def exposition(self) -> bytes:
        h = "vllm:time_to_first_token_seconds"
        buckets = "".join(
            f'{h}_bucket{{le="{le}"}} {0 if le != "+Inf" and float(le) < 3 else self.slow}\n'
            for le in ("0.1", "1.0", "5.0", "+Inf")
        )
        return (
            "# TYPE http_requests_total counter\n"
            f'http_requests_total{{handler="/v1/completions",method="POST",status="2xx"}} {self.ok}\n'
            f'http_requests_total{{handler="/v1/completions",method="POST",status="5xx"}} {self.failed}\n'
            f"# TYPE {h} histogram\n{buckets}{h}_sum {3.0 * self.slow}\n{h}_count {self.slow}\n"
        ).encode()


class _Metrics(http.server.BaseHTTPRequestHandler):
    server: FailingServer

    def do_GET(self) -> None:
        body = self.server.exposition()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def _complete(base: str, model: str) -> int:
    body = json.dumps({"model": model, "prompt": "the red cat", "max_tokens": 4}).encode()
    req = urllib.request.Request(f"{base}/v1/completions", body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_canary_figures_come_from_real_scrapes(tmp_path: Path) -> None:
    model = make_model(tmp_path / "model")
    exporter = FailingServer(("127.0.0.1", 0), _Metrics)
    bad_port = exporter.server_address[1]
    threading.Thread(target=exporter.serve_forever, daemon=True).start()
    try:
        with vllm_server(model, tmp_path / "vllm.log") as base:
            vllm_port = urllib.parse.urlparse(base).port
            assert vllm_port is not None
            jobs = _job("stable", vllm_port, "r-stable") + _job("canary", bad_port, "r-canary")
            with prometheus({}, scrape_configs=jobs) as prom:
                assert _complete(base, "tiny") == 200  # the counters exist from here on
                prom.eventually(f'http_requests_total{{{RUN_METRIC_LABEL}="r-stable"}}')
                prom.eventually(f'http_requests_total{{{RUN_METRIC_LABEL}="r-canary"}}')
                assert [_complete(base, "tiny") for _ in range(6)] == [200] * 6
                assert _complete(base, "no-such-model") == 404  # a client error: not the server's fault
                exporter.ok, exporter.failed, exporter.slow = 10, 10, 20

                def _seen() -> CanaryMetrics:
                    m = canary_metrics(prom.url, NS, "r-stable", "r-canary", 60)
                    assert m.error is None, m.error
                    assert m.stable is not None and m.stable.requests >= 6, m
                    assert m.canary is not None and m.canary.requests >= 15, m
                    return m

                m = eventually(
                    _seen, timeout=60, interval=0.5, ignoring=(AssertionError,), what="both versions scraped"
                )
                assert m.stable is not None and m.canary is not None
                assert m.stable.errors == 0, m.stable  # the 404 counted as a request, not an error
                assert m.stable.ttft_p95_s is not None and 0 < m.stable.ttft_p95_s < 3.0, m.stable
                assert m.canary.error_rate == pytest.approx(0.5, abs=0.05), m.canary
                assert m.canary.ttft_p95_s is not None and m.canary.ttft_p95_s > 1.0, m.canary
                verdict, message = judge_canary(m, max_error_rate=0.01, max_ttft_ratio=2.0, min_requests=5)
                assert verdict is Verdict.FAILED and "canary error rate 0.5" in message, message
                # Judged against itself, the real server passes.
                same = canary_metrics(prom.url, NS, "r-stable", "r-stable", 60)
                verdict, message = judge_canary(same, max_error_rate=0.01, max_ttft_ratio=2.0, min_requests=5)
                assert verdict is Verdict.PASSED, message

                # Fail closed: a run Prometheus does not scrape is an error, not "no errors".
                unscraped = canary_metrics(prom.url, NS, "r-stable", "r-elsewhere", 60)
                assert unscraped.error is not None and "no `up` series" in unscraped.error, unscraped
                assert judge_canary(unscraped, max_error_rate=0.01, max_ttft_ratio=2.0, min_requests=0)[0] is (
                    Verdict.PENDING
                )
    finally:
        exporter.shutdown()


def test_an_unreachable_prometheus_is_an_error_not_an_exception() -> None:
    m = canary_metrics(f"http://127.0.0.1:{free_port()}", NS, "a", "b", 30)
    assert m.stable is None and m.canary is None
    assert m.error is not None and "unreachable" in m.error, m.error
