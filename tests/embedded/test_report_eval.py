"""The run report's evaluation section shows each metric's interval and what a baseline gate's
difference means, read from the suite's results.json."""

from __future__ import annotations

import json
from pathlib import Path

from lmforge.api.meta import Status
from lmforge.operator.embedded.report import evaluations
from lmforge.operator.embedded.state import ResourceState, RunnerState
from lmforge.store import ArtifactWriter, LocalStore


def test_evaluation_section_has_intervals_and_the_baseline_verdict(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    results = {
        "tasks": {"facts": {"acc": 0.9}},
        "intervals": {"facts": {"acc": {"low": 0.7985, "high": 0.9534, "method": "wilson", "n": 60, "level": 0.95}}},
        "thresholds": [
            {
                "threshold": "facts.acc >= baseline.facts.acc - 0.02",
                "observed": 0.9,
                "passed": True,
                "bound": 0.86,
                "comparison": {
                    "difference": 0.02,
                    "low": -0.05,
                    "high": 0.08,
                    "p_value": 0.69,
                    "significant": False,
                    "method": "mcnemar",
                    "paired": 60,
                },
            }
        ],
    }
    w = ArtifactWriter(store, "evalsuite/gate/results")
    w.add_bytes("results.json", json.dumps(results).encode())
    w.commit("eval-results")
    status = Status(metrics={"facts.acc": 0.9}, artifacts={"results": store.url("evalsuite/gate/results")})
    state = RunnerState(
        store=store.url(""),
        order=["EvalSuite/gate"],
        resources={"EvalSuite/gate": ResourceState(kind="EvalSuite", name="gate", status=status)},
    )
    [section] = evaluations(state)
    assert section.header == ["metric", "value", "95% interval"]
    assert section.rows == [["facts.acc", "0.9", "0.7985–0.9534 (wilson, n=60)"]]
    assert section.text == [
        "facts.acc >= baseline.facts.acc - 0.02: difference +0.02 [-0.05, +0.08], "
        "within the noise (mcnemar, 60 paired items)"
    ]
