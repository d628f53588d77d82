"""Multiple-choice tasks scored by log-likelihood, as the harness scores HellaSwag/ARC/MMLU.

Each choice is a continuation of the task's prompt template (by default `Question: …\\nAnswer:`; a
cloze task uses the bare question); the predicted choice is the one
with the highest log-likelihood (`acc`) or the highest log-likelihood per character of the choice
(`acc_norm`, which stops long answers from being penalised for their length). All choices of a chunk
of rows go to the backend at once, so it can batch them and share each question's forward pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from lmforge.api.evalsuite import MC_PROMPT_TEMPLATE
from lmforge.trainer.evaluate.backend import Backend
from lmforge.trainer.evaluate.stats import ItemScores
from lmforge.trainer.evaluate.tasks import ChoiceRow, row_ids

CHUNK = 64
"""Rows per backend call (and progress report)."""


def context(row: ChoiceRow, template: str = MC_PROMPT_TEMPLATE) -> str:
    """The text every choice of `row` continues."""
    return template.replace("{question}", row.question)


def continuation(choice: str) -> str:
    return " " + choice


def fewshot_prefix(shots: Sequence[ChoiceRow], template: str = MC_PROMPT_TEMPLATE) -> str:
    """Solved examples placed before each question."""
    return "".join(context(s, template) + continuation(s.choices[s.answer]) + "\n\n" for s in shots)


def predict(lls: Sequence[float], choices: Sequence[str]) -> tuple[int, int]:
    """(argmax by log-likelihood, argmax by log-likelihood per character); ties go to the first."""
    best = max(range(len(lls)), key=lambda i: (lls[i], -i))
    norm = [ll / len(continuation(c)) for ll, c in zip(lls, choices, strict=True)]
    best_norm = max(range(len(norm)), key=lambda i: (norm[i], -i))
    return best, best_norm


def evaluate(
    backend: Backend,
    rows: Sequence[ChoiceRow],
    shots: Sequence[ChoiceRow],
    advance: Callable[[int], None],
    template: str = MC_PROMPT_TEMPLATE,
) -> dict[str, ItemScores]:
    """`acc` and `acc_norm`: per row, whether the predicted choice is the answer."""
    prefix = fewshot_prefix(shots, template)
    correct: list[float] = []
    correct_norm: list[float] = []
    for start in range(0, len(rows), CHUNK):
        chunk = rows[start : start + CHUNK]
        pairs = [(prefix + context(r, template), continuation(c)) for r in chunk for c in r.choices]
        lls = [ll for ll, _ in backend.loglikelihood(pairs)]
        at = 0
        for r in chunk:
            best, best_norm = predict(lls[at : at + len(r.choices)], r.choices)
            at += len(r.choices)
            correct.append(float(best == r.answer))
            correct_norm.append(float(best_norm == r.answer))
        advance(len(chunk))
    ids = row_ids(rows)
    return {
        "acc": ItemScores(correct, binary=True, ids=ids),
        "acc_norm": ItemScores(correct_norm, binary=True, ids=ids),
    }
