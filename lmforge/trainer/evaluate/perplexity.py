"""Perplexity on held-out text (a task's JSONL `text` rows) or on the validation split of the Dataset
the model was trained on (its packed token shards), as exp(mean NLL per predicted token)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from lmforge.trainer.errors import InvalidInput
from lmforge.trainer.evaluate.backend import Backend
from lmforge.trainer.evaluate.stats import ItemScores
from lmforge.trainer.evaluate.tasks import TextRow, row_ids
from lmforge.trainer.shards import Shards

CHUNK = 32
"""Documents or sequences per progress report."""


def _metrics(parts: list[tuple[float, int]], ids: list[str], what: str) -> dict[str, ItemScores]:
    """`nll` (Σ nats / Σ tokens over items) and `perplexity` (its exp), from per-item (nats, tokens)."""
    if sum(count for _, count in parts) == 0:
        raise InvalidInput(f"{what}: no tokens to score")
    nats, tokens = [float(n) for n, _ in parts], [float(c) for _, c in parts]
    return {"perplexity": ItemScores(nats, tokens, exp=True, ids=ids), "nll": ItemScores(nats, tokens, ids=ids)}


def text_perplexity(
    backend: Backend, rows: Sequence[TextRow], advance: Callable[[int], None], what: str
) -> dict[str, ItemScores]:
    """`perplexity` and `nll` (mean nats per token) over documents."""
    parts: list[tuple[float, int]] = []
    for start in range(0, len(rows), CHUNK):
        chunk = rows[start : start + CHUNK]
        parts += backend.text_nll([r.text for r in chunk])
        advance(len(chunk))
    return _metrics(parts, row_ids(rows), what)


def validation_sequences(shards_dir: Path, limit: int | None) -> np.ndarray:
    """Up to `limit` of the Dataset's validation rows, (N, seq_length) int64."""
    return Shards(shards_dir).validation.head(limit)


def token_perplexity(
    token_nll: Callable[[np.ndarray], list[tuple[float, int]]],
    sequences: np.ndarray,
    advance: Callable[[int], None],
    what: str,
) -> dict[str, ItemScores]:
    """`perplexity` and `nll` over packed token rows (items are the rows, keyed by their tokens)."""
    parts: list[tuple[float, int]] = []
    for start in range(0, len(sequences), CHUNK):
        chunk = sequences[start : start + CHUNK]
        parts += token_nll(chunk)
        advance(len(chunk))
    ids = [hashlib.sha256(np.ascontiguousarray(row, dtype=np.int64).tobytes()).hexdigest()[:16] for row in sequences]
    return _metrics(parts, ids, what)
