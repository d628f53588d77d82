"""Token rows from a Dataset's shards artifact (`index.json` + memory-mapped `.bin` files), and the
tokenizer-free way to find which Dataset a model was trained on.

Format (`lmforge-shards-v1`): `index.json` = {"dtype", "seq_length", "train": [{"file", "sequences"}],
"validation": [...]}; each `.bin` is `np.memmap(dtype).reshape(-1, seq_length)`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lmforge.trainer.errors import InvalidInput

if TYPE_CHECKING:
    import torch

CALIB_BATCH = 8
"""Calibration rows per forward pass."""


def forward_with_input_hooks(
    model: torch.nn.Module,
    hooks: list[tuple[torch.nn.Module, Callable[[torch.nn.Module, tuple[torch.Tensor, ...]], None]]],
    rows: np.ndarray,
) -> None:
    """Run the calibration rows (N, L) of token ids through `model` with a forward pre-hook on each
    module, so GPTQ and AWQ see every quantized layer's inputs; the hooks are always removed."""
    import torch

    handles = [module.register_forward_pre_hook(fn) for module, fn in hooks]
    try:
        model.eval()
        with torch.no_grad():
            for start in range(0, len(rows), CALIB_BATCH):
                model(input_ids=torch.from_numpy(rows[start:start + CALIB_BATCH]))
    finally:
        for handle in handles:
            handle.remove()


class Shards:
    """The two splits of a shards directory as lists of (sequences, seq_length) memmaps."""

    def __init__(self, root: Path) -> None:
        path = root / "index.json"
        try:
            index = json.loads(path.read_text(encoding="utf-8"))
            dtype = np.dtype(index["dtype"])
            self.seq_length = int(index["seq_length"])
            self.splits = {
                split: [np.memmap(root / e["file"], dtype=dtype, mode="r").reshape(-1, self.seq_length)
                        for e in index.get(split, [])]
                for split in ("train", "validation")
            }
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InvalidInput(f"shards {root}: unreadable: {exc}") from None

    def rows(self, split: str, limit: int | None = None) -> np.ndarray:
        """Up to `limit` rows of `split` in file order, (N, seq_length) int64."""
        parts, have = [], 0
        for arr in self.splits[split]:
            take = arr if limit is None else arr[: limit - have]
            parts.append(np.asarray(take, dtype=np.int64))
            have += len(take)
            if limit is not None and have >= limit:
                break
        if have == 0:
            raise InvalidInput(f"shards: the Dataset has no {split} rows")
        return np.concatenate(parts)

    def train_count(self) -> int:
        return sum(len(a) for a in self.splits["train"])

    def train_batch(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """`size` training rows drawn uniformly (with replacement across files), (size, L) int64."""
        sizes = np.array([len(a) for a in self.splits["train"]])
        if sizes.sum() == 0:
            raise InvalidInput("shards: the Dataset has no train rows")
        picks = rng.integers(0, sizes.sum(), size=size)
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        out = np.empty((size, self.seq_length), dtype=np.int64)
        for i, p in enumerate(picks):
            f = int(np.searchsorted(starts, p, side="right") - 1)
            out[i] = self.splits["train"][f][p - starts[f]]
        return out
