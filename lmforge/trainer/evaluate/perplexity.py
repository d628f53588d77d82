"""Perplexity on held-out text (a task's JSONL `text` rows) or on the validation split of the Dataset
the model was trained on (its packed token shards), as exp(mean NLL per predicted token)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from lmforge.trainer.errors import InvalidInput
from lmforge.trainer.evaluate.backend import Backend
from lmforge.trainer.evaluate.tasks import TextRow

CHUNK = 32
"""Documents or sequences per progress report."""


def _metrics(nll: float, tokens: int, what: str) -> dict[str, float]:
    if tokens == 0:
        raise InvalidInput(f"{what}: no tokens to score")
    mean = nll / tokens
    return {"perplexity": math.exp(mean), "nll": mean}


def text_perplexity(backend: Backend, rows: Sequence[TextRow], advance: Callable[[int], None],
                    what: str) -> dict[str, float]:
    """`perplexity` and `nll` (mean nats per token) over documents."""
    nll, tokens = 0.0, 0
    for start in range(0, len(rows), CHUNK):
        chunk = rows[start:start + CHUNK]
        part, count = backend.text_nll([r.text for r in chunk])
        nll, tokens = nll + part, tokens + count
        advance(len(chunk))
    return _metrics(nll, tokens, what)


def _split_arrays(shards_dir: Path) -> list[np.ndarray]:
    """The validation split's memory-mapped (sequences, L) arrays: through the Dataset stage's
    `ShardReader` when this build has it, else straight from `index.json`'s documented format."""
    try:
        from lmforge.trainer.dataset.shards import ShardReader
    except ImportError:
        index = json.loads((shards_dir / "index.json").read_text())
        dtype, seq = np.dtype(index["dtype"]), int(index["seq_length"])
        return [np.memmap(shards_dir / e["file"], dtype=dtype, mode="r").reshape(-1, seq)
                for e in index["validation"]]
    return list(ShardReader(shards_dir).validation.arrays)


def validation_sequences(shards_dir: Path, limit: int | None) -> np.ndarray:
    """Up to `limit` of the Dataset's validation rows, (N, seq_length)."""
    try:
        arrays = _split_arrays(shards_dir)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InvalidInput(f"shards {shards_dir}: unreadable: {exc}") from None
    parts: list[np.ndarray] = []
    have = 0
    for rows in arrays:
        parts.append(np.asarray(rows[: None if limit is None else limit - have]))
        have += len(parts[-1])
        if limit is not None and have >= limit:
            break
    if have == 0:
        raise InvalidInput(f"shards {shards_dir}: the Dataset has no validation split")
    return np.concatenate(parts)


def token_perplexity(token_nll: Callable[[np.ndarray], tuple[float, int]], sequences: np.ndarray,
                     advance: Callable[[int], None], what: str) -> dict[str, float]:
    """`perplexity` and `nll` over packed token rows."""
    nll, tokens = 0.0, 0
    for start in range(0, len(sequences), CHUNK):
        chunk = sequences[start:start + CHUNK]
        part, count = token_nll(chunk)
        nll, tokens = nll + part, tokens + count
        advance(len(chunk))
    return _metrics(nll, tokens, what)
