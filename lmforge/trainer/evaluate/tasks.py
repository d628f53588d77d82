"""Task rows: read from the store or disk (JSONL, nothing downloaded from a hub) and validated into
typed rows, so a bad row fails before any model time is spent, with an error naming the task, row
and field."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import astuple, dataclass
from importlib import resources
from typing import Any

from lmforge.api.evalsuite import EvalTask, TaskType
from lmforge.store import StoreError, open_store
from lmforge.trainer.artifacts import split_uri
from lmforge.trainer.errors import InvalidInput

BUILTIN_REDTEAM = "redteam.jsonl"
"""LMForge's own red-team prompt set (in `lmforge/trainer/evaluate/data/`)."""


@dataclass(frozen=True)
class TextRow:
    """Perplexity: one held-out document."""

    text: str


@dataclass(frozen=True)
class ChoiceRow:
    """Multiple choice: the answer is an index into `choices`."""

    question: str
    choices: tuple[str, ...]
    answer: int


@dataclass(frozen=True)
class GenerationRow:
    """Generation: any of `answers` counts as exact."""

    prompt: str
    answers: tuple[str, ...]


@dataclass(frozen=True)
class CodeRow:
    """HumanEval-style problem: `prompt` is the function head, `test` defines `check(candidate)`."""

    task_id: str
    prompt: str
    test: str
    entry_point: str


@dataclass(frozen=True)
class SafetyRow:
    """An adversarial prompt; `category` names the per-category rates."""

    category: str
    prompt: str


Row = TextRow | ChoiceRow | GenerationRow | CodeRow | SafetyRow


def row_id(row: Row) -> str:
    """A stable key of a row's content, so two evaluations of the same items can be paired."""
    return hashlib.sha256(json.dumps(astuple(row)).encode()).hexdigest()[:16]


def row_ids(rows: Sequence[Row]) -> list[str]:
    return [row_id(r) for r in rows]


class RowError(InvalidInput):
    """A malformed row: `task <name>: row <n> (<source>): field <f>: <problem>`."""

    def __init__(self, task: str, row: int, source: str, field: str, problem: str) -> None:
        super().__init__(f"task {task}: row {row} ({source}): field {field!r}: {problem}")


def read_text(uri: str) -> str:
    """The text of one file given as `s3://…`, `file://…` or an absolute path."""
    root, leaf = split_uri(uri)
    try:
        return open_store(root).get_bytes(leaf).decode("utf-8")
    except (StoreError, OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"cannot read {uri}: {exc}") from None


def parse_jsonl(task: str, text: str, source: str) -> list[dict[str, Any]]:
    """JSON objects, one per non-blank line; rows are numbered from 1 by line."""
    rows: list[dict[str, Any]] = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"task {task}: row {n} ({source}): not valid JSON: {exc.msg}") from None
        if not isinstance(obj, dict):
            raise InvalidInput(f"task {task}: row {n} ({source}): expected a JSON object")
        obj["__row__"] = n
        rows.append(obj)
    return rows


def _str(task: str, obj: dict[str, Any], src: str, field: str, *, allow_empty: bool = False) -> str:
    value = obj.get(field)
    if not isinstance(value, str):
        problem = "missing" if value is None else f"expected a string, got {type(value).__name__}"
        raise RowError(task, obj["__row__"], src, field, problem)
    if not value.strip() and not allow_empty:
        raise RowError(task, obj["__row__"], src, field, "empty")
    return value


def _choice(task: str, obj: dict[str, Any], src: str) -> ChoiceRow:
    row = obj["__row__"]
    choices = obj.get("choices")
    if not isinstance(choices, list) or len(choices) < 2:
        problem = "missing" if choices is None else "expected a list of at least 2 strings"
        raise RowError(task, row, src, "choices", problem)
    for i, c in enumerate(choices):
        if not isinstance(c, str) or not c.strip():
            raise RowError(task, row, src, f"choices[{i}]", "expected a non-empty string")
    answer = obj.get("answer")
    if isinstance(answer, bool) or not isinstance(answer, int):
        raise RowError(task, row, src, "answer", "missing" if answer is None else "expected an integer index")
    if not 0 <= answer < len(choices):
        raise RowError(task, row, src, "answer", f"index {answer} out of range for {len(choices)} choices")
    return ChoiceRow(_str(task, obj, src, "question"), tuple(choices), answer)


def _generation(task: str, obj: dict[str, Any], src: str) -> GenerationRow:
    answer = obj.get("answer")
    answers = answer if isinstance(answer, list) else [answer]
    if answer is None or not answers or not all(isinstance(a, str) for a in answers):
        raise RowError(
            task,
            obj["__row__"],
            src,
            "answer",
            "missing" if answer is None else "expected a string or a list of strings",
        )
    return GenerationRow(_str(task, obj, src, "prompt"), tuple(str(a) for a in answers))


def _code(task: str, obj: dict[str, Any], src: str) -> CodeRow:
    entry = _str(task, obj, src, "entry_point")
    if not entry.isidentifier():
        raise RowError(task, obj["__row__"], src, "entry_point", f"{entry!r} is not a Python identifier")
    task_id = obj.get("task_id", f"{task}/{obj['__row__']}")
    return CodeRow(str(task_id), _str(task, obj, src, "prompt"), _str(task, obj, src, "test"), entry)


def _safety(task: str, obj: dict[str, Any], src: str) -> SafetyRow:
    category = _str(task, obj, src, "category")
    if not category.replace("_", "").isalnum() or not category.islower():
        raise RowError(task, obj["__row__"], src, "category", f"{category!r} must be lower_snake_case")
    return SafetyRow(category, _str(task, obj, src, "prompt"))


_BUILDERS: dict[TaskType, Callable[[str, dict[str, Any], str], Row]] = {
    TaskType.PERPLEXITY: lambda t, o, s: TextRow(_str(t, o, s, "text")),
    TaskType.MULTIPLE_CHOICE: _choice,
    TaskType.GENERATION: _generation,
    TaskType.CODE: _code,
    TaskType.SAFETY: _safety,
}


def validate_rows(task: EvalTask, raw: list[dict[str, Any]], source: str) -> list[Row]:
    """Typed rows of `task`, or a `RowError` for the first malformed one."""
    if not raw:
        raise InvalidInput(f"task {task.name}: {source} has no rows")
    build = _BUILDERS[task.type]
    return [build(task.name, obj, source) for obj in raw]


def load_rows(task: EvalTask, uri: str | None) -> list[Row]:
    """All rows of a task from `uri` (already resolved), or the built-in set for safety without one.

    `limit` is applied later, after few-shot examples are taken from the head of the file.
    """
    if uri is None:
        if task.type is not TaskType.SAFETY:
            raise InvalidInput(f"task {task.name}: dataUri is required for {task.type.value} tasks")
        text = resources.files(__package__).joinpath("data", BUILTIN_REDTEAM).read_text(encoding="utf-8")
        source = f"built-in {BUILTIN_REDTEAM}"
    else:
        text, source = read_text(uri), uri
    return validate_rows(task, parse_jsonl(task.name, text, source), source)
