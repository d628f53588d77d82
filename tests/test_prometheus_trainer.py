"""Prometheus really scrapes a stage's progress gauges from a running stage process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from support.prometheus import free_port, prometheus


def test_prometheus_scrapes_stage_progress(tmp_path: Path) -> None:
    port = free_port()
    # A real process that reports progress through the trainer's reporter with its metrics server on.
    script = tmp_path / "stage.py"
    script.write_text(
        textwrap.dedent(f"""
        import time
        from lmforge.api.contract import StageName
        from lmforge.store import open_store
        from lmforge.trainer.progress import ProgressReporter, start_metrics_server
        start_metrics_server({port})
        rep = ProgressReporter(StageName.PRETRAIN, "run-1", open_store({str(tmp_path / "store")!r}))
        for step in range(1, 10_000):
            rep.progress(step, 10_000, metrics={{"loss": 5.0 - step * 1e-4, "tokens_per_second": 1234.0}})
            time.sleep(0.05)
    """)
    )
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    try:
        with prometheus({"trainer": [f"127.0.0.1:{port}"]}) as prom:
            steps = prom.eventually('lmforge_stage_step{stage="pretrain",run_id="run-1"} > 0')
            assert float(steps[0]["value"][1]) >= 1
            tps = prom.eventually('lmforge_stage_metric{name="tokens_per_second"}')
            assert float(tps[0]["value"][1]) == 1234.0
            loss = prom.eventually('lmforge_stage_metric{name="loss"}')
            assert 0 < float(loss[0]["value"][1]) < 5.0
    finally:
        proc.terminate()
        proc.wait(10)
