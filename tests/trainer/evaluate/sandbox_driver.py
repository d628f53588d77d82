"""Runs one program through `run_program` and prints its Outcome as JSON: the tests start it with
`setpriv` so the evaluator itself is an unprivileged user. Input (stdin): {"source", "limits",
"isolation", "bwrap"}."""

from __future__ import annotations

import dataclasses
import json
import sys

from lmforge.api.evalsuite import CodeIsolation
from lmforge.trainer.evaluate.sandbox import Limits, SandboxUnavailable, run_program


def main() -> None:
    job = json.load(sys.stdin)
    try:
        outcome = run_program(
            job["source"], Limits(**job["limits"]), CodeIsolation(job["isolation"]), bwrap=job.get("bwrap")
        )
    except SandboxUnavailable as exc:
        print(json.dumps({"unavailable": str(exc)}))
        return
    print(json.dumps(dataclasses.asdict(outcome)))


if __name__ == "__main__":
    main()
