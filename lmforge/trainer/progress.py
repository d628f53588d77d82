"""Progress reporting per the stage contract (`lmforge.api.contract`): JSON records on stdout for
the embedded runner and `kubectl logs`, the latest one in the store for the operator, and the same
figures as Prometheus gauges when `LMFORGE_METRICS_PORT` is set."""

from __future__ import annotations

import os
import sys
import time
from typing import IO, TYPE_CHECKING, Any

from lmforge.api.contract import PROGRESS_KEY, RESULT_KEY, ProgressRecord, RecordType, StageName
from lmforge.store import Store

if TYPE_CHECKING:
    from lmforge.trainer.tracking import Tracker

_GAUGES: dict[str, Any] = {}
_EXPORTING = False
"""Set once this process serves Prometheus metrics; gauges are only maintained then."""


def _gauge(name: str, doc: str, labels: tuple[str, ...]) -> Any:
    """Prometheus gauges are process-global; create each once."""
    if name not in _GAUGES:
        from prometheus_client import Gauge

        _GAUGES[name] = Gauge(name, doc, labels)
    return _GAUGES[name]


_FAILURES: dict[tuple[str, str], int] = {}
"""Tracking failures of this process by (backend, what), kept whether or not metrics are exported."""


def count_tracking_failure(backend: str, what: str) -> None:
    """One failed (`request`) or dropped (`dropped`) tracking send: `lmforge_tracking_failures_total`."""
    _FAILURES[backend, what] = _FAILURES.get((backend, what), 0) + 1
    if _EXPORTING:
        if "lmforge_tracking_failures_total" not in _GAUGES:
            from prometheus_client import Counter

            _GAUGES["lmforge_tracking_failures_total"] = Counter(
                "lmforge_tracking_failures",
                "Experiment-tracking requests that failed or records dropped",
                ("backend", "what"),
            )
        _GAUGES["lmforge_tracking_failures_total"].labels(backend=backend, what=what).inc()


def tracking_failures() -> dict[tuple[str, str], int]:
    """This process's tracking failures so far (for tests and the final report line)."""
    return dict(_FAILURES)


def start_metrics_server(port: int | None = None) -> int | None:
    """Expose this process's gauges on `port` (or `$LMFORGE_METRICS_PORT`); returns the port."""
    raw = port if port is not None else os.environ.get("LMFORGE_METRICS_PORT")
    if raw in (None, ""):
        return None
    from prometheus_client import start_http_server

    global _EXPORTING
    bound = int(raw)
    start_http_server(bound, addr=os.environ.get("LMFORGE_METRICS_ADDR", "127.0.0.1"))
    _EXPORTING = True
    return bound


class ProgressReporter:
    """Emits `ProgressRecord`s for one stage run.

    Store writes are throttled (`store_interval` seconds) because each is an object PUT; stdout
    lines are throttled separately (`line_interval`), and `force=True` bypasses both.
    """

    def __init__(
        self,
        stage: StageName,
        run_id: str,
        output: Store | None,
        *,
        worker: int = 0,
        stream: IO[str] | None = None,
        store_interval: float = 5.0,
        line_interval: float = 0.5,
        tracker: Tracker | None = None,
    ) -> None:
        self.stage = stage
        self.run_id = run_id
        self.output = output
        self.worker = worker
        self.stream = stream if stream is not None else sys.stdout
        self.store_interval = store_interval
        self.line_interval = line_interval
        self._last_store = 0.0
        self._last_line = 0.0
        self._start = time.monotonic()
        self._base_step = 0
        self._labels = {"stage": stage.value, "run_id": run_id}
        self.tracker = tracker
        """Experiment tracking (`lmforge.trainer.tracking`): gets every record, unthrottled."""

    def _emit(self, record: ProgressRecord, force: bool) -> None:
        if self.tracker is not None and self.worker == 0:
            self.tracker.record(record)  # only enqueues: tracking never slows the stage
        now = time.monotonic()
        if force or now - self._last_line >= self.line_interval:
            self._last_line = now
            print(record.line(), file=self.stream, flush=True)
        if self.output is not None and self.worker == 0 and (force or now - self._last_store >= self.store_interval):
            self._last_store = now
            try:
                self.output.put_bytes(PROGRESS_KEY, record.model_dump_json(by_alias=True).encode())
            except Exception as exc:  # progress is advisory: never fail the stage for it
                print(f"warning: could not store progress: {exc}", file=sys.stderr)
        if _EXPORTING:
            self._update_gauges(record)

    def _update_gauges(self, record: ProgressRecord) -> None:
        _gauge("lmforge_stage_step", "Units done by the running stage", ("stage", "run_id")).labels(**self._labels).set(
            record.step
        )
        if record.total is not None:
            _gauge("lmforge_stage_total", "Units expected by the running stage", ("stage", "run_id")).labels(
                **self._labels
            ).set(record.total)
        metric = _gauge(
            "lmforge_stage_metric", "Latest metric values of the running stage", ("stage", "run_id", "name")
        )
        for name, value in record.metrics.items():
            metric.labels(name=name, **self._labels).set(value)

    def count_from(self, step: int) -> None:
        """Measure the rate (and so the ETA) from now and `step` on: a stage resumed at step N has done
        only the steps after N itself, so counting from 0 would promise a far too early finish."""
        self._start = time.monotonic()
        self._base_step = step

    def progress(
        self,
        step: int,
        total: int | None = None,
        *,
        metrics: dict[str, float] | None = None,
        message: str | None = None,
        unit: str = "step",
        force: bool = False,
    ) -> ProgressRecord:
        """Report that `step` of `total` units are done."""
        eta = None
        elapsed = time.monotonic() - self._start
        done = step - self._base_step  # units this process did since count_from (all, by default)
        if total and done > 0 and step <= total:
            eta = elapsed / done * (total - step)
        record = ProgressRecord(
            stage=self.stage,
            run_id=self.run_id,
            step=step,
            total=total,
            unit=unit,
            metrics=dict(metrics or {}),
            message=message,
            eta_seconds=eta,
            worker=self.worker,
        )
        self._emit(record, force or (total is not None and step >= total))
        return record

    def result(
        self, artifacts: dict[str, str], metrics: dict[str, float] | None = None, message: str | None = None
    ) -> ProgressRecord:
        """The final record: written to `result.json` (after every artifact manifest), then stdout."""
        record = ProgressRecord(
            type=RecordType.RESULT,
            stage=self.stage,
            run_id=self.run_id,
            artifacts=artifacts,
            metrics=dict(metrics or {}),
            message=message,
            worker=self.worker,
        )
        if self.output is not None and self.worker == 0:
            self.output.put_bytes(RESULT_KEY, record.model_dump_json(by_alias=True).encode())
        self._emit(record, force=True)
        return record

    def error(self, message: str, retryable: bool) -> ProgressRecord:
        """The failure record (stdout and store)."""
        record = ProgressRecord(
            type=RecordType.ERROR,
            stage=self.stage,
            run_id=self.run_id,
            message=message,
            retryable=retryable,
            worker=self.worker,
        )
        self._emit(record, force=True)
        return record
