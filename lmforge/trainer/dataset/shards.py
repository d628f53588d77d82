"""The token shard format (`lmforge-shards-v1`): packing, the seeded row order, and `ShardReader`.

A shards directory holds `index.json` and raw little-endian `.bin` files, each an array of shape
(sequences, seq_length) in `dtype` (uint16 iff the vocabulary fits in 65,536 ids, else uint32), so
the pretraining loader memory-maps them (`np.memmap(path, dtype, mode="r").reshape(-1, L)`) and never
loads a corpus into RAM. Documents are tokenized, EOS is appended after each, and the concatenated
stream is cut into rows of L tokens; the tail shorter than L is dropped (and counted). Rows are then
permuted with the seed: the first `validation` rows of the permutation form the validation split.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

FORMAT = "lmforge-shards-v1"
INDEX = "index.json"


def dtype_for(vocab_size: int) -> np.dtype[Any]:
    """uint16 when every id fits, else uint32 (little-endian either way)."""
    return np.dtype("<u2") if vocab_size <= 65536 else np.dtype("<u4")


class Packer:
    """Appends documents' token ids (+ EOS) to a raw file of full rows of `seq_length` tokens."""

    def __init__(self, out: BinaryIO, seq_length: int, dtype: np.dtype[Any], eos_id: int) -> None:
        self.out = out
        self.L = seq_length
        self.dtype = dtype
        self.eos = eos_id
        self._carry = np.zeros(0, dtype=dtype)  # (< L,) tokens waiting for a full row
        self.rows = 0
        self.tokens = 0  # tokens of all documents, EOS included

    def add(self, docs: Sequence[Sequence[int]]) -> None:
        """Pack a batch of documents' ids."""
        lengths = [len(ids) + 1 for ids in docs]
        batch = np.empty(sum(lengths), dtype=self.dtype)
        pos = 0
        for ids, n in zip(docs, lengths, strict=True):
            batch[pos:pos + n - 1] = ids
            batch[pos + n - 1] = self.eos
            pos += n
        self.tokens += len(batch)
        stream = np.concatenate([self._carry, batch]) if len(self._carry) else batch
        full = len(stream) // self.L * self.L
        if full:
            self.out.write(stream[:full].astype(self.dtype.newbyteorder("<"), copy=False).tobytes())
            self.rows += full // self.L
        self._carry = stream[full:].copy()

    @property
    def tail(self) -> int:
        """Tokens that did not fill a last row (dropped)."""
        return len(self._carry)


def row_order(rows: int, seed: int) -> np.ndarray:
    """The seeded permutation of packed rows: (rows,) int64."""
    return np.random.default_rng(seed).permutation(rows).astype(np.int64)


def split_sizes(rows: int, validation_fraction: float) -> tuple[int, int]:
    """(validation, train) row counts; at least one validation row when the fraction is positive and
    there are two rows or more."""
    val = round(rows * validation_fraction)
    if validation_fraction > 0 and rows >= 2:
        val = max(val, 1)
    val = min(val, rows - 1) if rows else 0
    return val, rows - val


def plan_shards(rows: int, validation_fraction: float, seed: int, shard_sequences: int
                ) -> list[tuple[str, str, np.ndarray]]:
    """Every shard to write: (split, file name, packed row indices in order)."""
    order = row_order(rows, seed)
    val, _ = split_sizes(rows, validation_fraction)
    plan = []
    for split, prefix, part in (("validation", "val", order[:val]), ("train", "train", order[val:])):
        for k, start in enumerate(range(0, len(part), shard_sequences)):
            plan.append((split, f"{prefix}-{k:05d}.bin", part[start:start + shard_sequences]))
    return plan


def write_shard(packed: np.ndarray, rows: np.ndarray, path: Path) -> tuple[int, str]:
    """Gather `rows` of the packed (n, L) array into `path`; returns (sequences, sha256)."""
    h = hashlib.sha256()
    with open(path, "wb") as f:
        for start in range(0, len(rows), 4096):
            chunk = np.ascontiguousarray(packed[np.sort(rows[start:start + 4096])])
            # keep the permuted order inside the chunk, not the sorted one used for the read
            chunk = chunk[np.argsort(np.argsort(rows[start:start + 4096]))]
            data = chunk.tobytes()
            h.update(data)
            f.write(data)
    return len(rows), h.hexdigest()


class ShardSplit:
    """One split's shard files as memory-mapped (sequences, L) arrays, indexed as one sequence."""

    def __init__(self, root: Path, entries: list[dict[str, Any]], dtype: np.dtype[Any], seq_length: int) -> None:
        self.entries = entries
        self.arrays = [np.memmap(root / e["file"], dtype=dtype, mode="r").reshape(-1, seq_length)
                       for e in entries]
        self._ends = np.cumsum([len(a) for a in self.arrays]) if self.arrays else np.zeros(0, dtype=np.int64)

    def __len__(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    def __getitem__(self, i: int) -> np.ndarray:
        """Row `i` (negative counts from the end): (L,)."""
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"sequence {i} out of range ({n})")
        shard = int(np.searchsorted(self._ends, i, side="right"))
        start = int(self._ends[shard - 1]) if shard else 0
        return np.asarray(self.arrays[shard][i - start])

    def __iter__(self) -> Iterator[np.ndarray]:
        for array in self.arrays:
            yield from array


class ShardReader:
    """Opens a shards directory (`index.json` + `.bin`); `len`/`[i]` address the training split."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        try:
            self.index: dict[str, Any] = json.loads((self.root / INDEX).read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"{self.root}: not a shards directory ({INDEX}: {exc})") from None
        if self.index.get("format") != FORMAT:
            raise ValueError(f"{self.root}: unknown shard format {self.index.get('format')!r}")
        self.seq_length = int(self.index["seq_length"])
        self.dtype = np.dtype(self.index["dtype"]).newbyteorder("<")
        self.vocab_size = int(self.index["vocab_size"])
        self.eos_id = int(self.index["eos_id"])
        self.train = ShardSplit(self.root, self.index["train"], self.dtype, self.seq_length)
        self.validation = ShardSplit(self.root, self.index["validation"], self.dtype, self.seq_length)

    def __len__(self) -> int:
        return len(self.train)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.train[i]

    def verify(self) -> None:
        """Check every file's sha256 against the index (raises ValueError naming the file)."""
        for entry in self.index["train"] + self.index["validation"]:
            h = hashlib.sha256()
            with open(self.root / entry["file"], "rb") as f:
                while chunk := f.read(1 << 22):
                    h.update(chunk)
            if h.hexdigest() != entry["sha256"]:
                raise ValueError(f"{self.root / entry['file']}: sha256 mismatch")
