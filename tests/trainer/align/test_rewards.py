"""Verifiable rewards as named table cases: extraction, numeric equivalence, format, user functions."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from lmforge.api.alignment import AnswerExtraction, Reward, RewardType
from lmforge.trainer.align import rewards as rw


def chat(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


@pytest.mark.parametrize(
    ("how", "pattern", "text", "want"),
    [
        pytest.param(AnswerExtraction.LAST_NUMBER, None, "3 + 4 is 7.", "7", id="last-number"),
        pytest.param(AnswerExtraction.LAST_NUMBER, None, "it is -1,024 dollars", "-1,024", id="negative-thousands"),
        pytest.param(AnswerExtraction.LAST_NUMBER, None, "no digits", None, id="none"),
        pytest.param(
            AnswerExtraction.BOXED,
            None,
            r"so \boxed{1} no \boxed{\frac{1}{2}} end",
            r"\frac{1}{2}",
            id="boxed-nested-last",
        ),
        pytest.param(AnswerExtraction.BOXED, None, r"\boxed{unclosed", None, id="boxed-unclosed"),
        pytest.param(AnswerExtraction.REGEX, r"Answer: (\w+)", "Answer: a ... Answer: b", "b", id="regex-group"),
        pytest.param(AnswerExtraction.REGEX, r"\d+", "1 then 22", "22", id="regex-whole"),
    ],
)
def test_extract(how: AnswerExtraction, pattern: str | None, text: str, want: str | None) -> None:
    assert rw.extract(text, how, pattern) == want


@pytest.mark.parametrize(
    ("got", "want", "numeric", "match"),
    [
        pytest.param("4.0", "4", True, True, id="float-int"),
        pytest.param("1,024", 1024, True, True, id="thousands"),
        pytest.param("3/4", "0.75", True, True, id="fraction"),
        pytest.param("4.0", "4", False, False, id="string-compare"),
        pytest.param(" yes ", "yes", True, True, id="string-trimmed"),
        pytest.param(None, "4", True, False, id="no-answer"),
    ],
)
def test_answers_match(got: str | None, want: object, numeric: bool, match: bool) -> None:
    assert rw.answers_match(got, want, numeric) is match


def test_answer_and_format_rewards_score_a_batch() -> None:
    funcs, weights = rw.build(
        [Reward(type=RewardType.ANSWER), Reward(type=RewardType.FORMAT, pattern=r"^\d+$", weight=0.5)],
        "spec.grpo.rewards",
    )
    answer, fmt = funcs
    assert answer is not None and fmt is not None and weights == [1.0, 0.5]
    completions = [chat("7"), chat("it is 7"), chat("8")]
    assert answer(prompts=[[]] * 3, completions=completions, answer=["7", "7", "7"]) == [1.0, 1.0, 0.0]
    assert fmt(prompts=[[]] * 3, completions=completions) == [1.0, 0.0, 1.0]


def test_function_reward_gets_prompt_completion_and_row(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []
    monkeypatch.setattr("json.dumps", lambda p, c, **row: seen.append((p, c, row)) or 2.5)
    (fn,), _ = rw.build([Reward(type=RewardType.FUNCTION, function="json:dumps")], "spec.grpo.rewards")
    assert fn is not None
    prompts = [[{"role": "user", "content": "q"}]]
    assert fn(prompts=prompts, completions=[chat("a")], answer=["x"], completion_ids=[[1]]) == [2.5]
    assert seen == [("q", "a", {"answer": "x"})]


def test_unimportable_function_names_its_field() -> None:
    with pytest.raises(Exception, match=r"spec.grpo.rewards\[0\].function: cannot import nosuch.mod:f"):
        rw.build([Reward(type=RewardType.FUNCTION, function="nosuch.mod:f")], "spec.grpo.rewards")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        pytest.param({"type": "format"}, "needs `pattern`", id="format-without-pattern"),
        pytest.param({"type": "answer", "extract": "regex"}, "needs `pattern`", id="regex-without-pattern"),
        pytest.param({"type": "format", "pattern": "("}, "not a valid regex", id="bad-regex"),
        pytest.param({"type": "model"}, "needs `modelRef`", id="model-without-ref"),
        pytest.param({"type": "answer", "function": "a:b"}, "only for rewards of type function", id="stray-function"),
    ],
)
def test_reward_spec_checks(fields: dict[str, str], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Reward.model_validate(fields)


def test_code_reward_runs_the_rows_tests_in_the_sandbox() -> None:
    """A correct body scores 1, a wrong one 0, and an early `exit(0)` (tests never run) 0: the
    sandbox's harness, not the exit status, says whether the tests passed."""
    (reward,) = rw.build([Reward(type=RewardType.CODE, prefix_field="head")], "spec.grpo.rewards")[0]
    assert reward is not None
    head = "def add(a, b):\n"
    test = "def check(f):\n    assert f(2, 3) == 5\n    assert f(-1, 1) == 0\n"
    completions = ["    return a + b\n", "    return a - b\n", "    raise SystemExit(0)\n"]
    n = len(completions)
    scores = reward(["p"] * n, completions, head=[head] * n, test=[test] * n, entry_point=["add"] * n)
    assert scores == [1.0, 0.0, 0.0]


def test_code_reward_names_a_missing_column() -> None:
    (reward,) = rw.build([Reward(type=RewardType.CODE, test_field="tests")], "spec.grpo.rewards")[0]
    assert reward is not None
    with pytest.raises(Exception, match="no column 'tests'"):
        reward(["p"], ["x = 1"], test=["assert x == 1"])
