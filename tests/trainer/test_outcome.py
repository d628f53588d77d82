"""The entry point writes `result.json` from the stage's typed outcome, and only when the outcome asks
for it: a torchrun rank other than 0 and the serve stage (which reported while still serving) leave
it alone. Named cases, each with a fake stage so no model is loaded."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from lmforge.api.contract import EXIT_OK, RESULT_KEY, StageName, StageSpec
from lmforge.trainer import __main__ as entry
from lmforge.trainer.context import StageContext, StageOutcome

MANIFEST = {
    "apiVersion": "lmforge.io/v1alpha1",
    "kind": "Dataset",
    "metadata": {"name": "d"},
    "spec": {"sources": [{"name": "s", "uri": "x.txt", "license": "MIT"}]},
}


@dataclass(frozen=True)
class Case:
    id: str
    outcome: StageOutcome
    want_result: dict[str, object] | None
    """`artifacts` and `metrics` of the written result.json; None: no result.json."""


CASES = [
    Case(
        "artifacts-and-metrics",
        StageOutcome({"shards": "file:///s"}, {"tokens": 12.0}),
        {"artifacts": {"shards": "file:///s"}, "metrics": {"tokens": 12.0}},
    ),
    Case(
        "no-metrics-is-an-empty-map",
        StageOutcome({"card": "file:///c"}),
        {"artifacts": {"card": "file:///c"}, "metrics": {}},
    ),
    Case(
        "worker-without-artifacts-still-reports",
        StageOutcome({}, {"documents": 3.0}),
        {"artifacts": {}, "metrics": {"documents": 3.0}},
    ),
    Case("rank-0-reports-for-this-rank", StageOutcome({}, {"loss": 1.0}, writes_result=False), None),
    Case("stage-reported-itself", StageOutcome({"endpoint": "http://x/v1"}, writes_result=False), None),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_the_entry_point_writes_the_result_the_outcome_asks_for(
    case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LMFORGE_WORK_DIR", str(tmp_path / "work"))
    monkeypatch.delenv("LMFORGE_METRICS_PORT", raising=False)
    store = tmp_path / "store"
    spec = StageSpec(
        stage=StageName.DATASET, resource=MANIFEST, store=store.as_uri(), output="out", run_id="r1", inputs={}
    )
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec.wire()))
    seen: list[StageContext] = []

    def fake_stage(ctx: StageContext) -> StageOutcome:
        seen.append(ctx)
        return case.outcome

    monkeypatch.setattr(entry, "load", lambda stage: fake_stage)
    assert entry.main(["dataset", "--spec", str(spec_file)]) == EXIT_OK
    assert len(seen) == 1
    result = store / "out" / RESULT_KEY
    if case.want_result is None:
        assert not result.exists()
        return
    written = json.loads(result.read_text())
    assert written["type"] == "result" and written["runId"] == "r1"
    assert {k: written[k] for k in case.want_result} == case.want_result
