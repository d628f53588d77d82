"""Row formats and bad input: every bad row is named by file, row and field, or counted and skipped."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmforge.api.alignment import AlignmentMethod
from lmforge.trainer.align.data import load_rows, split
from lmforge.trainer.errors import InvalidInput

from .conftest import preference_rows, sft_rows, write_jsonl


def test_sft_rows_of_both_shapes(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "sft.jsonl", [*sft_rows(3), {"prompt": "hi", "response": "hello", "system": "be kind"}]
    )
    rows = load_rows(str(path), AlignmentMethod.SFT)
    assert len(rows.examples) == 4 and rows.bad == 0
    assert [m["role"] for m in rows.examples[3].prompt] == ["system", "user", "assistant"]


@pytest.mark.parametrize(
    ("method", "row", "field"),
    [
        pytest.param(AlignmentMethod.DPO, {"prompt": "p", "rejected": "r"}, "'chosen'", id="missing-chosen"),
        pytest.param(AlignmentMethod.REWARD, {"prompt": "p", "chosen": "c"}, "'rejected'", id="missing-rejected"),
        pytest.param(
            AlignmentMethod.SFT,
            {"messages": [{"role": "robot", "content": "x"}]},
            "messages[0].role",
            id="unknown-role",
        ),
        pytest.param(
            AlignmentMethod.SFT,
            {"messages": [{"role": "user", "content": "x"}]},
            "no assistant turn",
            id="no-assistant",
        ),
        pytest.param(AlignmentMethod.PPO, {"question": "x"}, "'prompt'", id="ppo-missing-prompt"),
        pytest.param(AlignmentMethod.DPO, "{not json", "not JSON", id="garbled"),
    ],
)
def test_bad_row_names_file_row_and_field(tmp_path: Path, method: AlignmentMethod, row: object, field: str) -> None:
    good = preference_rows(2) if method in (AlignmentMethod.DPO, AlignmentMethod.REWARD) else sft_rows(2)
    if method is AlignmentMethod.PPO:
        good = [{"prompt": "hello"}] * 2
    path = write_jsonl(tmp_path / "rows.jsonl", [*good, row])  # type: ignore[list-item]
    with pytest.raises(InvalidInput) as err:
        load_rows(str(path), method)
    assert "rows.jsonl:3: " in str(err.value) and field in str(err.value)


def test_bad_rows_counted_and_skipped_when_allowed(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [*preference_rows(5), {"prompt": "p", "rejected": "r"}, {"prompt": 3}])
    rows = load_rows(str(path), AlignmentMethod.DPO, skip_bad_rows=True)
    assert len(rows.examples) == 5 and rows.bad == 2
    assert "p.jsonl:6: missing field 'chosen'" in rows.reasons[0]


def test_directory_glob_and_parquet(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    write_jsonl(tmp_path / "d" / "a.jsonl", preference_rows(3))
    pq.write_table(pa.Table.from_pylist(preference_rows(4, seed=1)), tmp_path / "d" / "b.parquet")
    assert len(load_rows(str(tmp_path / "d"), AlignmentMethod.DPO).examples) == 7
    assert len(load_rows(str(tmp_path / "d" / "*.jsonl"), AlignmentMethod.DPO).examples) == 3
    with pytest.raises(InvalidInput, match="no data files"):
        load_rows(str(tmp_path / "nothing-*.jsonl"), AlignmentMethod.DPO)


def test_split_is_seeded_and_keeps_every_row(tmp_path: Path) -> None:
    rows = load_rows(str(write_jsonl(tmp_path / "s.jsonl", sft_rows(40))), AlignmentMethod.SFT).examples
    train, val = split(rows, 0.1, 7)
    assert len(train) == 36 and len(val) == 4
    assert split(rows, 0.1, 7)[1] == val


def test_kto_row_needs_a_boolean_label(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "thumbs.jsonl", [{"prompt": "hi", "completion": "yo", "label": "yes"}])
    with pytest.raises(InvalidInput, match=r"thumbs.jsonl:1: field 'label' must be true or false"):
        load_rows(str(data), AlignmentMethod.KTO)


def test_grpo_rows_keep_their_columns_for_the_rewards(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "1 + 1 =", "answer": "2", "tests": ["x"]}])
    (ex,) = load_rows(str(path), AlignmentMethod.GRPO).examples
    assert ex.prompt == [{"role": "user", "content": "1 + 1 ="}] and ex.columns == {"answer": "2", "tests": ["x"]}
