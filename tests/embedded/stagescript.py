"""A small real stage process for the local backend's tests, started through a wrapper "python".

The backend builds its real command line (`PY -m lmforge.trainer <stage> --spec F`); PY is a wrapper
that runs this script instead of the trainer. It follows the stage contract: progress records on
stdout, `result.json` written through `lmforge.store` before exit 0, `lmforge: error:` as the last
stderr line on failure, exit 2 for invalid input. The annotation `test/behaviour` picks what it does.
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

from lmforge.api.contract import ERROR_PREFIX, RESULT_KEY, ProgressRecord, RecordType, StageSpec
from lmforge.store import open_store


def main(argv: list[str]) -> int:
    assert argv[:2] == ["-m", "lmforge.trainer"], argv
    spec = StageSpec.model_validate(json.loads(Path(argv[argv.index("--spec") + 1]).read_text()))
    behaviour = spec.resource["metadata"].get("annotations", {}).get("test/behaviour", "ok")
    if spec.stage.value == "serve":
        behaviour = "serve"
    out = open_store(spec.store).child(spec.output)
    worker = int(os.environ.get("LMFORGE_WORKER_INDEX", "0"))

    def record(step: int, total: int, **metrics: float) -> None:
        print(
            ProgressRecord(
                stage=spec.stage, run_id=spec.run_id, step=step, total=total, metrics=metrics, worker=worker
            ).line(),
            flush=True,
        )

    def finish() -> int:
        result = ProgressRecord(
            type=RecordType.RESULT,
            stage=spec.stage,
            run_id=spec.run_id,
            artifacts={"model": out.url("model")},
            metrics={"loss": 1.0},
        )
        if worker == 0:
            out.put_bytes(RESULT_KEY, result.model_dump_json(by_alias=True).encode())
        print(result.line(), flush=True)
        return 0

    def fail(message: str, code: int) -> int:
        print(f"{ERROR_PREFIX}{message}", file=sys.stderr, flush=True)
        return code

    print(f"threads={os.environ.get('OMP_NUM_THREADS')} worker={worker}", flush=True)
    if behaviour == "ok":
        for step in range(1, 4):
            record(step, 3, loss=4.0 - step)
        return finish()
    if behaviour == "scores":  # an evaluate stage: the metrics named by `test/metrics`, and what it evaluated
        metrics = json.loads(spec.resource["metadata"]["annotations"]["test/metrics"])
        evaluated = {k: v.artifacts.get("model", "") for k, v in spec.inputs.items()}
        out.put_bytes("evaluated.json", json.dumps(evaluated).encode())
        result = ProgressRecord(
            type=RecordType.RESULT,
            stage=spec.stage,
            run_id=spec.run_id,
            artifacts={"results": out.url("results")},
            metrics=metrics,
        )
        out.put_bytes(RESULT_KEY, result.model_dump_json(by_alias=True).encode())
        print(result.line(), flush=True)
        return 0
    if behaviour == "probe":  # a smoke evaluate stage: asks the endpoint it was given which model it serves
        (endpoint,) = [v.artifacts["endpoint"] for v in spec.inputs.values() if "endpoint" in v.artifacts]
        import urllib.request

        with urllib.request.urlopen(f"{endpoint}/models", timeout=10) as resp:
            served = json.loads(resp.read())["data"][0]["id"]
        out.put_bytes("probed.json", json.dumps({"endpoint": endpoint, "served": served}).encode())
        result = ProgressRecord(
            type=RecordType.RESULT,
            stage=spec.stage,
            run_id=spec.run_id,
            artifacts={"results": out.url("results")},
            metrics={"smoke.exact_match": 1.0 if served == "good" else 0.0},
        )
        out.put_bytes(RESULT_KEY, result.model_dump_json(by_alias=True).encode())
        print(result.line(), flush=True)
        return 0
    if behaviour == "publish":  # publish local directories (`test/publish`: {"artifact": "/dir"}) as artifacts
        from lmforge.store import ArtifactWriter

        made = json.loads(spec.resource["metadata"]["annotations"]["test/publish"])
        for name, local in made.items():
            w = ArtifactWriter(out, name, clear_existing=True)
            w.add_dir(Path(local))
            w.commit(name)
        result = ProgressRecord(
            type=RecordType.RESULT,
            stage=spec.stage,
            run_id=spec.run_id,
            artifacts={name: out.url(name) for name in made},
        )
        out.put_bytes(RESULT_KEY, result.model_dump_json(by_alias=True).encode())
        print(result.line(), flush=True)
        return 0
    if behaviour == "workers":
        out.put_bytes(f"worker-{worker}", b"done")
        return finish()
    if behaviour == "fail":
        record(1, 3, loss=3.0)
        return fail("loss is NaN for 5 steps", 1)
    if behaviour == "invalid":
        return fail("spec.data.uri: no such file", 2)
    if behaviour == "fail-once":
        if not out.exists("failed-once"):
            out.put_bytes("failed-once", b"1")
            return fail("transient failure", 1)
        return finish()
    if behaviour == "sleep":

        def stop(_sig: int, _frame: object) -> None:
            out.put_bytes("interrupted", b"1")
            sys.exit(fail("interrupted", 130))

        signal.signal(signal.SIGINT, stop)
        step = 0
        while True:
            step += 1
            record(step, 1000, loss=1.0)
            time.sleep(0.1)
    if behaviour == "serve":
        port = int(os.environ.get("LMFORGE_SERVE_PORT") or spec.resource["spec"]["serving"]["port"])
        served = spec.resource["metadata"].get("annotations", {}).get("test/answer", "tiny")

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = json.dumps({"data": [{"id": served}]}).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        server = http.server.HTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        if os.environ.get("MLFLOW_TRACKING_URI"):  # register this version as the real serve stage does
            from lmforge.trainer.tracking import trackers_for

            trackers = trackers_for(spec)
            trackers.record(
                ProgressRecord(
                    type=RecordType.RESULT,
                    stage=spec.stage,
                    run_id=spec.run_id,
                    artifacts={"endpoint": f"http://127.0.0.1:{port}/v1"},
                )
            )
            # kept open while serving, like the real stage: its thread registers the version meanwhile
        while True:
            time.sleep(1)
    return fail(f"unknown behaviour {behaviour}", 2)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
