"""Generation tasks: greedy answers scored by exact match and token F1 after SQuAD-style
normalisation (lower case, no punctuation or articles, single spaces)."""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Sequence

from lmforge.trainer.evaluate.backend import Backend, GenerationRequest
from lmforge.trainer.evaluate.stats import ItemScores
from lmforge.trainer.evaluate.tasks import GenerationRow, row_ids

CHUNK = 32
STOP = ("\n",)
"""An answer is one line."""


def normalize(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    return float(any(normalize(prediction) == normalize(a) for a in answers))


def f1(prediction: str, answers: Sequence[str]) -> float:
    """Best token-overlap F1 against any of the answers."""
    pred = normalize(prediction).split()
    best = 0.0
    for answer in answers:
        gold = normalize(answer).split()
        if not pred or not gold:
            best = max(best, float(pred == gold))
            continue
        common = sum((Counter(pred) & Counter(gold)).values())
        if common:
            precision, recall = common / len(pred), common / len(gold)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


def prompt(row: GenerationRow, shots: Sequence[GenerationRow]) -> str:
    return "".join(f"{s.prompt} {s.answers[0]}\n\n" for s in shots) + row.prompt


def evaluate(
    backend: Backend,
    rows: Sequence[GenerationRow],
    shots: Sequence[GenerationRow],
    max_new_tokens: int,
    seed: int,
    advance: Callable[[int], None],
) -> dict[str, ItemScores]:
    """`exact_match` and `f1` of each row's answer."""
    em: list[float] = []
    f: list[float] = []
    for start in range(0, len(rows), CHUNK):
        chunk = rows[start : start + CHUNK]
        outs = backend.generate([GenerationRequest(prompt(r, shots), max_new_tokens, STOP) for r in chunk], seed)
        for r, out in zip(chunk, outs, strict=True):
            em.append(exact_match(out, r.answers))
            f.append(f1(out, r.answers))
        advance(len(chunk))
    ids = row_ids(rows)
    return {"exact_match": ItemScores(em, binary=True, ids=ids), "f1": ItemScores(f, ids=ids)}
