"""Token rows from the Dataset stage's memory-mapped shards (`lmforge.trainer.shards`), in a
deterministic, resumable order.

The order is a pure function of (seed, position): position p in the endless stream is row
`perm(seed, p // n)[p % n]`, one fresh permutation per epoch. Every rank walks the same stream and
takes its own slice of each global micro-batch, so the whole sampler state is one integer per
source — saved in the checkpoint, a resumed run continues with exactly the rows it would have seen.
"""

from __future__ import annotations

import numpy as np

from lmforge.trainer.errors import InvalidInput
from lmforge.trainer.shards import TokenRows


class StreamSampler:
    """The endless, epoch-permuted stream of row indices of one source; `position` is its state."""

    def __init__(self, n_rows: int, seed: int, position: int = 0) -> None:
        if n_rows <= 0:
            raise InvalidInput("shards: the train split has no rows")
        self.n = n_rows
        self.seed = seed
        self.position = position
        self._epoch = -1
        self._perm = np.empty(0, dtype=np.int64)

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
            self._epoch = epoch
        return self._perm

    def indices(self, start: int, count: int) -> np.ndarray:
        """Row indices at stream positions [start, start + count)."""
        out = np.empty(count, dtype=np.int64)
        for i, p in enumerate(range(start, start + count)):
            out[i] = self._permutation(p // self.n)[p % self.n]
        return out

    def draw(self, count: int, rank: int, world: int) -> np.ndarray:
        """This rank's `count` indices of the next global draw of `count × world`; advances the state."""
        mine = self.indices(self.position + rank * count, count)
        self.position += count * world
        return mine


class BatchStream:
    """Micro-batches for one rank: `micro_batch` rows, a `replay_fraction` of them from an earlier
    Dataset (continual pretraining), labels equal to inputs (the model shifts them) with padding
    masked out as -100."""

    def __init__(
        self,
        train: TokenRows,
        seed: int,
        micro_batch: int,
        rank: int,
        world: int,
        pad_id: int | None,
        replay: TokenRows | None = None,
        replay_fraction: float = 0.0,
    ) -> None:
        self.train, self.replay = train, replay
        self.rank, self.world = rank, world
        self.pad_id = pad_id
        self.n_replay = round(micro_batch * replay_fraction) if replay is not None else 0
        if replay is not None and replay_fraction > 0:
            self.n_replay = max(1, min(micro_batch - 1, self.n_replay))
        self.n_main = micro_batch - self.n_replay
        self.main = StreamSampler(len(train), seed)
        self.old = StreamSampler(len(replay), seed + 1) if replay is not None and self.n_replay else None

    def next(self) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids, labels), each int64 of shape (micro_batch, seq_length)."""
        rows = self.train.take(self.main.draw(self.n_main, self.rank, self.world))
        if self.old is not None and self.replay is not None:
            rows = np.concatenate([rows, self.replay.take(self.old.draw(self.n_replay, self.rank, self.world))])
        labels = rows.copy()
        if self.pad_id is not None:
            labels[rows == self.pad_id] = -100
        return rows, labels

    def state(self) -> dict[str, int]:
        """Everything needed to continue the stream (saved in checkpoints)."""
        return {"position": self.main.position, "replay_position": self.old.position if self.old else 0}

    def restore(self, state: dict[str, int]) -> None:
        self.main.position = int(state["position"])
        if self.old is not None:
            self.old.position = int(state.get("replay_position", 0))


def validation_batches(
    rows: TokenRows, micro_batch: int, batches: int, rank: int, world: int, pad_id: int | None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The fixed held-out micro-batches of this rank: the same number on every rank (ZeRO-3 gathers
    parameters collectively, so ranks must run equally many forwards), rows wrapping if few."""
    if len(rows) == 0:
        return []
    per_rank = -(-batches // world)
    out = []
    for b in range(per_rank):
        start = (b * world + rank) * micro_batch
        idx = np.arange(start, start + micro_batch) % len(rows)
        x = rows.take(idx)
        y = x.copy()
        if pad_id is not None:
            y[x == pad_id] = -100
        out.append((x, y))
    return out
