"""Verifiable rewards for GRPO/RLOO: answer extraction and matching, format checks, code that must
pass the row's tests in the sandbox, user functions.

Each `Reward` of the spec becomes one callable in trl's reward-function shape,
`f(prompts, completions, **columns) -> list[float]`, where `completions` are chats (a list with one
assistant message each) or plain strings, and every dataset column arrives as a list the length of
the batch. trl sums the callables with `reward_weights`. Pure Python: no torch here (code runs in
the sandbox's child processes).

Answers compare as numbers when both sides parse (`4.0` == `4`, `1,024` == `1024`), else as trimmed
strings; a completion with no extractable answer scores 0, never an error.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from fractions import Fraction
from typing import Any

from lmforge.api.alignment import AnswerExtraction, Reward, RewardType
from lmforge.trainer.errors import InvalidInput

RewardFunc = Callable[..., list[float]]
"""trl's reward function: (prompts, completions, **columns) → one float per completion."""

_TRL_ARGUMENTS = frozenset({"completion_ids", "trainer_state", "log_extra", "log_metric", "environments"})
"""Keyword arguments trl adds beside the dataset's columns."""

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def completion_text(completion: Any) -> str:
    """The text of one completion, conversational (`[{"role": "assistant", "content": …}]`) or plain."""
    if isinstance(completion, list):
        return "".join(str(m.get("content", "")) for m in completion if isinstance(m, dict))
    return str(completion)


def last_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{…}`, braces balanced (`\\boxed{\\frac{1}{2}}` → `\\frac{1}{2}`)."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 1, start + len("\\boxed{")
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j]
    return None


def extract(text: str, how: AnswerExtraction, pattern: str | None = None) -> str | None:
    """The answer in `text`, or None when there is none."""
    if how is AnswerExtraction.BOXED:
        return last_boxed(text)
    if how is AnswerExtraction.LAST_NUMBER:
        found = _NUMBER.findall(text)
        return found[-1] if found else None
    assert pattern is not None
    matches = list(re.finditer(pattern, text, re.DOTALL))
    if not matches:
        return None
    last = matches[-1]
    return last.group(1) if last.re.groups else last.group(0)


def as_number(text: str) -> Fraction | None:
    """`text` as an exact number (`1,024`, `-2.50`, `3/4`), or None."""
    cleaned = text.strip().replace(",", "").rstrip(".")
    try:
        return Fraction(cleaned)
    except (ValueError, ZeroDivisionError):
        return None


def answers_match(got: str | None, want: Any, numeric: bool = True) -> bool:
    """Whether an extracted answer equals the reference."""
    if got is None or want is None:
        return False
    want_s = str(want)
    if numeric:
        a, b = as_number(got), as_number(want_s)
        if a is not None and b is not None:
            return a == b
    return got.strip() == want_s.strip()


def answer_reward(spec: Reward) -> RewardFunc:
    """1.0 when the extracted answer equals the row's `answerField`, else 0.0."""
    column = spec.answer_field

    def answer(prompts: list[Any], completions: list[Any], **columns: Any) -> list[float]:
        wants = columns.get(column)
        if wants is None:
            raise InvalidInput(f"reward answer: the rows have no column {column!r} (set answerField)")
        return [
            float(answers_match(extract(completion_text(c), spec.extract, spec.pattern), w, spec.numeric))
            for c, w in zip(completions, wants, strict=True)
        ]

    answer.__name__ = f"answer_{spec.extract.value}"
    return answer


def format_reward(spec: Reward) -> RewardFunc:
    """1.0 when the completion matches the pattern, else 0.0."""
    assert spec.pattern is not None
    regex = re.compile(spec.pattern, re.DOTALL)

    def format_match(prompts: list[Any], completions: list[Any], **columns: Any) -> list[float]:
        return [float(regex.search(completion_text(c)) is not None) for c in completions]

    return format_match


def code_reward(spec: Reward) -> RewardFunc:
    """1.0 when the completion passes the row's tests in the code sandbox, else 0.0. The sandbox is
    the EvalSuite's (`lmforge.trainer.evaluate.sandbox`): the same isolation and the same rule for
    "passed" (the harness's nonce after the last test), so a reward cannot be won by exiting early
    or by touching the trainer. It fails closed: no sandbox, no reward (`SandboxUnavailable`)."""
    import math

    from lmforge.trainer.evaluate import code, sandbox

    limits = sandbox.Limits(wall_seconds=spec.timeout_seconds, cpu_seconds=max(1, math.ceil(spec.timeout_seconds)))
    checked: list[bool] = []

    def code_passes(prompts: list[Any], completions: list[Any], **columns: Any) -> list[float]:
        if not checked:
            sandbox.probe()  # once, before the first batch: refuses when isolation cannot be set up
            checked.append(True)
        tests = columns.get(spec.test_field)
        if tests is None:
            raise InvalidInput(f"reward code: the rows have no column {spec.test_field!r} (set testField)")
        heads = columns.get(spec.prefix_field) if spec.prefix_field else None
        if spec.prefix_field and heads is None:
            raise InvalidInput(f"reward code: the rows have no column {spec.prefix_field!r} (set prefixField)")
        entries = columns.get(spec.entry_point_field) if spec.entry_point_field else None
        sources = []
        for i, completion in enumerate(completions):
            head = str(heads[i]) if heads is not None else ""
            call = f"\n\ncheck({entries[i]})\n" if entries is not None and entries[i] else "\n"
            sources.append(f"{head}{completion_text(completion)}\n\n{tests[i]}{call}")
        return [float(o.passed) for o in code.execute(sources, limits)]

    return code_passes


def import_function(ref: str, field: str) -> Callable[..., Any]:
    """Import `module:function`; an `InvalidInput` naming `field` when it cannot be imported."""
    module, name = ref.split(":")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise InvalidInput(f"{field}: cannot import {ref}: {exc}") from None
    if not callable(fn):
        raise InvalidInput(f"{field}: {ref} is not callable")
    return fn


def function_reward(spec: Reward, field: str) -> RewardFunc:
    """`fn(prompt, completion, **row) -> float` per completion (prompt: the last turn's text)."""
    assert spec.function is not None
    fn = import_function(spec.function, f"{field}.function")

    def function(prompts: list[Any], completions: list[Any], **columns: Any) -> list[float]:
        rows = [
            {
                k: v[i]
                for k, v in columns.items()
                if k not in _TRL_ARGUMENTS and isinstance(v, list) and len(v) == len(completions)
            }
            for i in range(len(completions))
        ]
        return [
            float(fn(completion_text(p[-1:] if isinstance(p, list) else p), completion_text(c), **row))
            for p, c, row in zip(prompts, completions, rows, strict=True)
        ]

    function.__name__ = spec.function.replace(":", ".")
    return function


def build(rewards: list[Reward], field: str) -> tuple[list[RewardFunc | None], list[float]]:
    """The callables (None where a reward model goes, filled in by the caller) and their weights."""
    funcs: list[RewardFunc | None] = []
    for i, spec in enumerate(rewards):
        if spec.type is RewardType.ANSWER:
            funcs.append(answer_reward(spec))
        elif spec.type is RewardType.FORMAT:
            funcs.append(format_reward(spec))
        elif spec.type is RewardType.FUNCTION:
            funcs.append(function_reward(spec, f"{field}[{i}]"))
        elif spec.type is RewardType.CODE:
            funcs.append(code_reward(spec))
        else:
            funcs.append(None)
    return funcs, [r.weight for r in rewards]
