"""MLflow tracking of one stage run, sent from a background thread through a bounded queue.

The stage's thread only enqueues (`record`); the sender thread creates (or, on a retry of the same
stage run, finds) the MLflow run, logs the flattened spec as parameters, sends metrics in batches with
their steps, and on the `result` record tags the artifacts' store URIs, uploads the small cards and
results (never model weights) and, for a ModelRelease's serve stage, registers the model version
(tagged `lmforge.run_id`). Which version is `champion` or `challenger` is not the stage's to say: the
operator (or `lmforge run`) moves the aliases as the release's rollout proceeds
(`lmforge.operator.aliases`). A failed request is counted (`lmforge_tracking_failures_total`),
warned about on stderr at most every `WARN_EVERY_S`, and retried with backoff; what is still unsent
when `close` runs out of time is reported, never raised.
"""

from __future__ import annotations

import queue
import re
import sys
import threading
import time
from typing import Any

from lmforge.api.contract import ProgressRecord, RecordType
from lmforge.store.mlflow import MlflowRest, TrackingError, quote
from lmforge.trainer.progress import count_tracking_failure
from lmforge.trainer.tracking import RunInfo

QUEUE_SIZE = 10_000
"""Records waiting for the sender; beyond it new records are dropped (and counted), never waited on."""
SEND_EVERY_S = 5.0
"""Least time between two rounds of requests: a stage reporting every step (several a second) costs one
`log-batch` per 5 s, not one a step, in the stage's process and on the server. At one a second, a
server sharing a 2-core machine with training cost it 1.4-3.8 % of its tokens/s
(benchmarks/tracking_overhead.py --paired); the first round is sent at once, the last at close()."""
BATCH = 500
"""Metrics per `log-batch` request (the server takes at most 1000)."""
PARAMS_PER_BATCH = 100
PARAM_VALUE_MAX = 6000
BACKOFF_MAX_S = 10.0
WARN_EVERY_S = 30.0
SMALL_FILE_MAX = 256 * 1024
"""Largest card/result file uploaded as an MLflow artifact; anything bigger stays a store URI."""
SMALL_SUFFIXES = (".md", ".json", ".txt", ".html")

_KEY = re.compile(r"[^A-Za-z0-9_\-. /]")


def _now_ms() -> int:
    return int(time.time() * 1000)


class MlflowTracker:
    """One MLflow run per stage run; see the module docstring."""

    def __init__(
        self, uri: str, info: RunInfo, *, client: MlflowRest | None = None, queue_size: int = QUEUE_SIZE
    ) -> None:
        self.info = info
        self.client = client or MlflowRest(uri)
        self.uri = uri
        self.failures = 0
        self.dropped = 0
        self.mlflow_run_id: str | None = None
        self.artifact_uri = ""
        self.model_version: str | None = None
        self._queue: queue.Queue[tuple[ProgressRecord, int] | None] = queue.Queue(queue_size)
        self._metrics: list[dict[str, Any]] = []
        self._final: ProgressRecord | None = None
        self._handled: ProgressRecord | None = None
        self._last_step = 0
        self._finished = False
        self._experiment_id = ""
        self._retry_at = 0.0
        self._backoff = 0.5
        self._last_warn = 0.0
        self._stop = threading.Event()
        self._deadline = float("inf")
        self._thread = threading.Thread(target=self._loop, name="lmforge-mlflow", daemon=True)
        self._thread.start()

    # The stage's side ---------------------------------------------------------------------------

    def record(self, record: ProgressRecord) -> None:
        try:
            self._queue.put_nowait((record, _now_ms()))
        except queue.Full:
            self.dropped += 1
            count_tracking_failure("mlflow", "dropped")

    def close(self, timeout: float = 30.0) -> None:
        """Flush for at most `timeout` seconds, then report what was not sent."""
        self._deadline = time.monotonic() + timeout
        self._stop.set()
        self._thread.join(timeout + 1.0)
        unsent = self._queue.qsize() + len(self._metrics) + (0 if self._finished else 1)
        if unsent or self.dropped:
            print(
                f"warning: tracking: {unsent} record(s) could not be sent to MLflow at {self.uri} and "
                f"{self.dropped} were dropped ({self.failures} failed requests); training is unaffected",
                file=sys.stderr,
                flush=True,
            )

    # The sender thread ---------------------------------------------------------------------------

    def _loop(self) -> None:
        next_send = 0.0
        while True:
            # At most one round of requests per SEND_EVERY_S while the stage runs: a step's records
            # pile up meanwhile and go in one batch (close() ends the wait at once).
            self._stop.wait(max(0.0, next_send - time.monotonic()))
            self._drain(block=not self._stop.is_set())
            stopping = self._stop.is_set()
            if time.monotonic() >= self._retry_at:
                next_send = time.monotonic() + SEND_EVERY_S
                try:
                    self._send(final=stopping)
                    self._backoff = 0.5
                except TrackingError as exc:
                    self._failed(exc)
                except Exception as exc:  # an unexpected answer must not end the sender (nor the stage)
                    self._failed(TrackingError(f"{type(exc).__name__}: {exc}"))
            if stopping and (self._finished or time.monotonic() >= self._deadline):
                return
            if stopping:
                time.sleep(min(0.1, max(0.0, self._retry_at - time.monotonic())))

    def _drain(self, block: bool) -> None:
        try:
            item = self._queue.get(timeout=0.5) if block else self._queue.get_nowait()
        except queue.Empty:
            return
        while item is not None:
            record, ms = item
            # A result's figures (its step is 0) belong at the last step reported.
            step = record.step if record.type is RecordType.PROGRESS else max(record.step, self._last_step)
            self._last_step = max(self._last_step, step)
            self._metrics += [
                {"key": _KEY.sub("_", k), "value": float(v), "timestamp": ms, "step": step}
                for k, v in record.metrics.items()
            ]
            if record.type is not RecordType.PROGRESS:
                self._final = record
            if len(self._metrics) > QUEUE_SIZE:  # the server has been away for long: keep the newest
                over = len(self._metrics) - QUEUE_SIZE
                self.dropped += over
                count_tracking_failure("mlflow", "dropped")
                del self._metrics[:over]
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                item = None

    def _failed(self, exc: TrackingError) -> None:
        self.failures += 1
        count_tracking_failure("mlflow", "request")
        self._retry_at = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, BACKOFF_MAX_S)
        if time.monotonic() - self._last_warn >= WARN_EVERY_S:
            self._last_warn = time.monotonic()
            print(f"warning: tracking: {exc} (will retry; {self.failures} failed so far)", file=sys.stderr, flush=True)

    def _send(self, final: bool) -> None:
        if self.mlflow_run_id is None:
            self._start()
        assert self.mlflow_run_id is not None
        while self._metrics:
            self.client.log_batch(self.mlflow_run_id, metrics=self._metrics[:BATCH])
            del self._metrics[:BATCH]
        if self._final is not None and self._handled is not self._final:
            self._handle(self._final)
            self._handled = self._final
        if final and not self._finished and self._queue.empty():
            if self._final is None:  # interrupted before any result or error
                self.client.update_run(self.mlflow_run_id, "KILLED", _now_ms())
            elif self.info.stage == "serve" and self._final.type is RecordType.RESULT:
                self.client.update_run(self.mlflow_run_id, "FINISHED", _now_ms())  # stopped serving
            self._finished = True

    def _start(self) -> None:
        info, c = self.info, self.client
        self._experiment_id = c.experiment_id(info.experiment)
        same = f"tags.`lmforge.run_id` = {quote(info.run_id)} and tags.`lmforge.stage` = {quote(info.stage)}"
        found = c.search_runs([self._experiment_id], same, 1)
        if found:
            run = found[0]
            c.update_run(run["info"]["run_id"], "RUNNING")
        else:
            run = c.create_run(self._experiment_id, info.run_id, info.tags, _now_ms())
        run_id = run["info"]["run_id"]
        tags = {**info.tags, **self._input_runs()}
        params = {k[:250]: v[:PARAM_VALUE_MAX] for k, v in info.params.items()}
        items = list(params.items())
        for i in range(0, max(len(items), 1), PARAMS_PER_BATCH):
            c.log_batch(run_id, params=dict(items[i : i + PARAMS_PER_BATCH]), tags=tags if i == 0 else None)
        self.artifact_uri = run["info"].get("artifact_uri", "")
        self.mlflow_run_id = run_id

    def _input_runs(self) -> dict[str, str]:
        """Tags naming the MLflow runs that produced this run's inputs (found by their artifact URIs)."""
        out: dict[str, str] = {}
        parent: str | None = None
        for key, artifacts in sorted(self.info.inputs.items()):
            for art, uri in sorted(artifacts.items()):
                found = self.client.search_runs(
                    [self._experiment_id], f"tags.`lmforge.artifact.{art}` = {quote(uri)}", 1
                )
                if found:
                    out[f"lmforge.input_run.{key}"] = found[0]["info"]["run_id"]
                    if parent is None or art == "model":
                        parent = found[0]["info"]["run_id"]
                    break
        if parent is not None:
            out["lmforge.parent_run"] = parent
        return out

    def _handle(self, final: ProgressRecord) -> None:
        """The `result` (artifacts, registry, FINISHED) or `error` (FAILED) record, once it comes."""
        assert self.mlflow_run_id is not None
        c, run_id = self.client, self.mlflow_run_id
        if final.type is RecordType.RESULT:
            c.log_batch(run_id, tags={f"lmforge.artifact.{_KEY.sub('_', k)}": v for k, v in final.artifacts.items()})
            self._upload_small(final.artifacts)
            if self.info.kind == "ModelRelease" and self.info.stage == "serve":
                self._register(final)
            else:  # a serving stage's result means "serving", not "done": its run stays RUNNING
                c.update_run(run_id, "FINISHED", _now_ms())
        else:
            c.log_batch(run_id, tags={"lmforge.error": (final.message or "")[:5000]})
            c.update_run(run_id, "FAILED", _now_ms())

    def _upload_small(self, artifacts: dict[str, str]) -> None:
        """The cards, results and reports themselves (small text); everything else by reference."""
        from lmforge.store import StoreError, open_store

        if not self.artifact_uri.startswith("mlflow-artifacts:"):
            return
        for name, uri in artifacts.items():
            if "://" not in uri or uri.startswith(("http://", "https://")):
                continue
            try:
                store = open_store(uri)
                sizes = store.sizes()
            except (StoreError, OSError):
                continue
            small = [
                k
                for k, n in sorted(sizes.items())
                if k.endswith(SMALL_SUFFIXES) and n <= SMALL_FILE_MAX and k != "MANIFEST.json"
            ][:20]
            for key in small:
                self.client.put_artifact(self.artifact_uri, f"{name}/{key}", store.get_bytes(key))

    def _register(self, final: ProgressRecord) -> None:
        """The release's model as a version of its registered model (no alias: see the module docstring)."""
        info, c = self.info, self.client
        assert self.mlflow_run_id is not None
        model = info.inputs.get(f"ModelRelease/{info.name}", {}).get("model") or next(
            (a["model"] for a in info.inputs.values() if "model" in a), None
        )
        if model is None:
            return
        name = info.tracking.registered_model or info.name
        c.ensure_registered_model(name)
        version = c.model_version_of_run(name, self.mlflow_run_id)
        if version is None:
            tags = {
                "lmforge.model_uri": model,
                "lmforge.run_id": info.run_id,
                "lmforge.lineage": " > ".join(info.lineage),
                **info.tracking.tags,
            }
            for key, metrics in info.input_metrics.items():
                if key.startswith("EvalSuite/"):
                    tags |= {f"eval.{key.split('/', 1)[1]}.{m}": repr(v) for m, v in metrics.items()}
            if final.artifacts.get("endpoint"):
                tags["lmforge.endpoint"] = final.artifacts["endpoint"]
            version = c.create_model_version(
                name,
                f"runs:/{self.mlflow_run_id}/model",
                self.mlflow_run_id,
                tags,
                description=f"{info.kind}/{info.name} run {info.run_id}: {model}",
            )
        self.model_version = version
