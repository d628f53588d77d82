"""Row validation, gates and the metric formulas (no model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmforge.api.evalsuite import EvalTask, TaskType
from lmforge.trainer.errors import InvalidInput
from lmforge.trainer.evaluate import gates
from lmforge.trainer.evaluate.code import pass_at_k
from lmforge.trainer.evaluate.generation import exact_match, f1
from lmforge.trainer.evaluate.safety import DatasetScorer, is_refusal, select
from lmforge.trainer.evaluate.tasks import SafetyRow, load_rows

MC = EvalTask(name="facts", type=TaskType.MULTIPLE_CHOICE, data_uri="x")


def _write(tmp_path: Path, rows: list[object]) -> str:
    path = tmp_path / "rows.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


GOOD = {"question": "q?", "choices": ["a", "b"], "answer": 1}


@pytest.mark.parametrize(
    ("bad", "field", "problem"),
    [
        ({"question": "q?", "choices": ["a", "b"], "answer": 2}, "'answer'", "index 2 out of range for 2 choices"),
        ({"question": "q?", "answer": 0}, "'choices'", "missing"),
        ({"question": "q?", "choices": ["a"], "answer": 0}, "'choices'", "at least 2"),
        ({"question": "q?", "choices": ["a", 3], "answer": 0}, "'choices[1]'", "non-empty string"),
        ({"question": "", "choices": ["a", "b"], "answer": 0}, "'question'", "empty"),
        ({"question": "q?", "choices": ["a", "b"], "answer": "b"}, "'answer'", "integer index"),
    ],
)
def test_malformed_choice_rows_name_task_row_and_field(
    tmp_path: Path, bad: dict[str, object], field: str, problem: str
) -> None:
    uri = _write(tmp_path, [GOOD, bad])
    with pytest.raises(InvalidInput) as err:
        load_rows(MC, uri)
    assert f"task facts: row 2 ({uri}): field {field}" in str(err.value)
    assert problem in str(err.value)


def test_bad_json_and_code_rows(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=r"task facts: row 2 .*not valid JSON"):
        load_rows(MC, _write(tmp_path, [GOOD, "{oops"]))
    code = EvalTask(name="code", type=TaskType.CODE, data_uri="x")
    with pytest.raises(InvalidInput, match=r"task code: row 1 .*field 'entry_point'.*not a Python identifier"):
        load_rows(code, _write(tmp_path, [{"prompt": "def f():", "test": "pass", "entry_point": "f-1"}]))


def test_builtin_red_team_set_covers_four_categories() -> None:
    rows = load_rows(EvalTask(name="safety", type=TaskType.SAFETY), None)
    cats = {r.category for r in rows if isinstance(r, SafetyRow)}
    assert cats == {"harmful_instructions", "pii_extraction", "jailbreak", "bias"}
    picked = select([r for r in rows if isinstance(r, SafetyRow)], 8)
    assert {r.category for r in picked} == cats and len(picked) == 8


def test_gates_pass_and_fail_as_thresholds_say() -> None:
    tasks = {"facts": {"acc": 0.5, "acc_norm": 0.25}, "heldout": {"perplexity": 30.0, "nll": 3.4}}
    results = gates.evaluate(
        ["facts.acc >= 0.5", "facts.acc_norm > 0.25", "heldout.perplexity <= 40", "heldout.nll < 3"], tasks
    )
    assert [r.passed for r in results] == [True, False, True, False]
    assert results[2].as_dict() == {"threshold": "heldout.perplexity <= 40", "observed": 30.0, "passed": True}
    assert gates.flatten(tasks)["heldout.perplexity"] == 30.0


def test_threshold_on_a_metric_no_task_produced_is_a_clear_error() -> None:
    with pytest.raises(InvalidInput, match=r"task code produced no metric 'pass@5' \(it produced pass@1, pass@k\)"):
        gates.evaluate(["code.pass@5 >= 0.1"], {"code": {"pass@1": 0.0, "pass@k": 0.0}})
    with pytest.raises(InvalidInput, match="no task 'other' produced metrics"):
        gates.evaluate(["other.acc >= 0.1"], {"code": {"pass@1": 0.0}})


def test_baseline_deltas() -> None:
    assert gates.deltas({"a.x": 0.5, "b.y": 2.0, "gate_passed": 1.0}, {"a.x": 0.25, "gate_passed": 0.0}) == {
        "a.x": 0.25
    }


def test_metric_formulas() -> None:
    assert exact_match("The Cat.", ["cat"]) == 1.0 and exact_match("dog", ["cat"]) == 0.0
    assert f1("red cat sat", ["the red cat"]) == pytest.approx(0.8)
    assert pass_at_k(5, 0, 1) == 0.0 and pass_at_k(5, 5, 1) == 1.0
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4) and pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)


def test_refusal_and_toxicity_scoring() -> None:
    assert is_refusal("I'm sorry, but I can't help with that.")
    assert is_refusal("I cannot provide instructions for that; it would be illegal.")
    assert not is_refusal("Sure! Step one: find a ladder.")
    scores = DatasetScorer().score(["you stupid idiot", "a friendly and helpful answer about the weather"])
    assert scores[0] == 1.0 and scores[1] == 0.0


def test_multiple_choice_prompt_template() -> None:
    """Cloze tasks continue the bare question; the default is the harness's Question/Answer form."""
    from lmforge.trainer.evaluate.multiple_choice import context
    from lmforge.trainer.evaluate.tasks import ChoiceRow

    row = ChoiceRow(question="The capital of Zorbia is", choices=("Quell", "Ost"), answer=0)
    assert context(row) == "Question: The capital of Zorbia is\nAnswer:"
    assert context(row, "{question}") == "The capital of Zorbia is"
    with pytest.raises(ValueError, match="must contain"):
        EvalTask(name="t", type=TaskType.MULTIPLE_CHOICE, prompt_template="no placeholder")
