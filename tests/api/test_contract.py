"""The stage contract's records round-trip through stdout lines and stored JSON."""

from __future__ import annotations

from lmforge.api.contract import (
    RECORD_PREFIX,
    ProgressRecord,
    RecordType,
    StageName,
    StageSpec,
    parse_record,
    record_from_json,
    stage_command,
)


def test_record_line_round_trip() -> None:
    rec = ProgressRecord(stage=StageName.PRETRAIN, run_id="r1", step=3, total=10, metrics={"loss": 2.5})
    line = rec.line()
    assert line.startswith(RECORD_PREFIX) and "\n" not in line
    back = parse_record(line)
    assert back is not None and back.step == 3 and back.metrics == {"loss": 2.5}


def test_plain_log_lines_and_garbage_are_not_records() -> None:
    assert parse_record("epoch 1 loss 2.0") is None
    assert parse_record(RECORD_PREFIX + "{not json") is None
    assert record_from_json(b"{}") is None


def test_result_record_carries_artifacts() -> None:
    rec = ProgressRecord(
        type=RecordType.RESULT, stage=StageName.DATASET, run_id="r", artifacts={"shards": "file:///s/shards"}
    )
    back = record_from_json(rec.model_dump_json(by_alias=True))
    assert back is not None and back.type is RecordType.RESULT and back.artifacts["shards"].endswith("shards")


def test_stage_spec_and_command() -> None:
    spec = StageSpec.model_validate(
        {
            "stage": "dataset",
            "resource": {"kind": "Dataset"},
            "store": "/tmp/s",
            "output": "datasets/d/r1",
            "runId": "r1",
            "worker": {"index": 1, "count": 2},
        }
    )
    assert spec.worker.index == 1 and spec.run_id == "r1"
    assert stage_command(spec.stage, "/x/spec.yaml") == [
        "python",
        "-m",
        "lmforge.trainer",
        "dataset",
        "--spec",
        "/x/spec.yaml",
    ]
