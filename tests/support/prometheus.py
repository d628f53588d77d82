"""A real Prometheus server (Debian's `prometheus`) for tests that check what gets scraped.

Tests point it at the operator's and the trainer's metrics endpoints and query its HTTP API, so a
metric that exists in code but is not exposed (wrong port, bad name, registry not served) fails.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Prometheus:
    """A running Prometheus scraping `targets` every second."""

    def __init__(self, url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.url = url
        self.proc = proc
        self.log = log

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query; the result vector."""
        qs = urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(f"{self.url}/api/v1/query?{qs}", timeout=5) as resp:
            body = json.load(resp)
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def eventually(self, expr: str, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Poll until the query returns samples (scrapes happen every second)."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(expr)
            if result:
                return result
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no samples for {expr!r} within {timeout}s; log:\n" + self.log.read_text()[-3000:]
                )
            time.sleep(0.5)


@contextmanager
def prometheus(
    targets: dict[str, list[str]], *, scrape_configs: str = "", rule_files: list[Path] | None = None
) -> Iterator[Prometheus]:
    """Start Prometheus with one scrape job per entry (`job name → host:port list`), on loopback.

    `scrape_configs` adds raw YAML jobs (indented as list items, e.g. Kubernetes service
    discovery); `rule_files` are loaded as alerting/recording rules (evaluated every second)."""
    binary = shutil.which("prometheus") or "/usr/bin/prometheus"
    if not Path(binary).exists():
        raise RuntimeError("prometheus is not installed (scripts/setup.sh installs Debian's package)")
    work = Path(tempfile.mkdtemp(prefix="lmforge-prom-"))
    jobs = "\n".join(
        f"  - job_name: {name}\n    static_configs:\n      - targets: {json.dumps(addrs)}"
        for name, addrs in targets.items()
    )
    rules = "".join(f"\n  - {json.dumps(str(r))}" for r in rule_files or [])
    (work / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        + (f"rule_files:{rules}\n" if rules else "")
        + f"scrape_configs:\n{jobs}\n{scrape_configs}\n"
    )
    port = free_port()
    log = work / "prometheus.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={work / 'prometheus.yml'}",
                f"--storage.tsdb.path={work / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("prometheus did not start:\n" + log.read_text()[-3000:])
            time.sleep(0.2)
        yield Prometheus(url, proc, log)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(work, ignore_errors=True)
