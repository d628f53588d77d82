"""The token shard format (`lmforge-shards-v1`): its index model, the one writer and the one reader.

A shards artifact holds `index.json` (a `ShardIndex`) and raw little-endian `.bin` files, each an
array of shape (sequences, seq_length) in `dtype` (uint16 iff the vocabulary fits in 65,536 ids, else
uint32), so every reader memory-maps them (`np.memmap(path, dtype, mode="r").reshape(-1, L)`) and
never loads a corpus into RAM. The Dataset stage writes it; pretraining, compression and evaluation
read it through `Shards`, so a change to the format happens here once.

Writing: documents are tokenized, EOS is appended after each, and the concatenated stream is cut into
rows of L tokens by `Packer`; the tail shorter than L is dropped (and counted). Rows are then permuted
with the seed (`row_order`): the first `validation` rows of the permutation form the validation split,
and `plan_shards` cuts each split into files of at most `shard_sequences` rows.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lmforge.trainer.errors import InvalidInput

FORMAT = "lmforge-shards-v1"
INDEX = "index.json"


class ShardEntry(BaseModel):
    """One `.bin` file of a split."""

    file: str
    """File name inside the shards directory."""
    sequences: int = Field(ge=0)
    """Rows of `seq_length` tokens in the file."""
    sha256: str = ""
    """SHA-256 of the file's bytes (empty in hand-made test shards)."""


class ShardIndex(BaseModel):
    """Contents of `index.json`; unknown fields are ignored so older readers accept newer writers."""

    model_config = ConfigDict(extra="ignore")

    format: Literal["lmforge-shards-v1"]
    dtype: Literal["uint16", "uint32"]
    """Token id type of every `.bin` file (little-endian)."""
    seq_length: int = Field(ge=1)
    """Tokens per row."""
    vocab_size: int = Field(ge=1)
    """Tokenizer vocabulary, special tokens included."""
    bos_id: int | None = None
    eos_id: int | None = None
    pad_id: int | None = None
    train: list[ShardEntry] = Field(default_factory=list)
    validation: list[ShardEntry] = Field(default_factory=list)
    tokens: dict[str, int] = Field(default_factory=dict)
    """Tokens per split (rows × seq_length)."""
    packed_tokens: int | None = None
    """Tokens of all packed documents, EOS included, before the tail was dropped."""
    dropped_tail_tokens: int | None = None
    """Tokens of the last partial row (dropped)."""
    seed: int | None = None
    """Seed of the row permutation."""

    @classmethod
    def load(cls, root: Path) -> ShardIndex:
        """Parse `root/index.json`; a missing, unreadable or foreign index is an `InvalidInput`."""
        path = Path(root) / INDEX
        try:
            return cls.model_validate_json(path.read_bytes())
        except OSError as exc:
            raise InvalidInput(f"shards: cannot read {path}: {exc}") from None
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = ".".join(str(x) for x in first["loc"]) or "index"
            raise InvalidInput(f"shards: {path}: {loc}: {first['msg']} (expected format {FORMAT!r})") from None

    def to_bytes(self) -> bytes:
        """The bytes of `index.json` (indented JSON, fields in declaration order, newline-terminated)."""
        return json.dumps(self.model_dump(mode="json"), indent=2).encode() + b"\n"

    @property
    def numpy_dtype(self) -> np.dtype[Any]:
        return np.dtype(self.dtype).newbyteorder("<")

    def split(self, name: str) -> list[ShardEntry]:
        if name not in ("train", "validation"):
            raise ValueError(f"no shard split {name!r} (train or validation)")
        return self.train if name == "train" else self.validation


# --- writing ---------------------------------------------------------------------------------------


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

    def add(self, docs: Iterable[Sequence[int]], lengths: Sequence[int] | None = None) -> None:
        """Pack a batch of documents' ids, each followed by EOS. With `lengths` (each document's id
        count) `docs` may be lazy, e.g. a `map` that builds each ids list just before it is copied, so
        one list at a time is alive; the batch becomes one array in a single `np.fromiter` pass (no
        per-document numpy call)."""
        if lengths is None:
            docs = list(docs)
            lengths = [len(ids) for ids in docs]
        count = sum(lengths) + len(lengths)
        eos = (self.eos,)
        stream = itertools.chain.from_iterable(itertools.chain.from_iterable(zip(docs, itertools.repeat(eos))))
        self.add_tokens(np.fromiter(stream, dtype=self.dtype, count=count))

    def add_tokens(self, batch: np.ndarray) -> None:
        """Append a stream of tokens (n,) in `dtype` whose documents already end in EOS."""
        self.tokens += len(batch)
        stream = np.concatenate([self._carry, batch]) if len(self._carry) else batch
        full = len(stream) // self.L * self.L
        if full:
            self.out.write(stream[:full].astype(self.dtype.newbyteorder("<"), copy=False).data)
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


def plan_shards(
    rows: int, validation_fraction: float, seed: int, shard_sequences: int
) -> list[tuple[str, str, np.ndarray]]:
    """Every shard to write: (split, file name, packed row indices in order)."""
    order = row_order(rows, seed)
    val, _ = split_sizes(rows, validation_fraction)
    plan = []
    for split, prefix, part in (("validation", "val", order[:val]), ("train", "train", order[val:])):
        for k, start in enumerate(range(0, len(part), shard_sequences)):
            plan.append((split, f"{prefix}-{k:05d}.bin", part[start : start + shard_sequences]))
    return plan


def write_shard(packed: np.ndarray, rows: np.ndarray, path: Path) -> tuple[int, str]:
    """Gather `rows` of the packed (n, L) array into `path`; returns (sequences, sha256)."""
    h = hashlib.sha256()
    with open(path, "wb") as f:
        for start in range(0, len(rows), 4096):
            chunk = np.ascontiguousarray(packed[np.sort(rows[start : start + 4096])])
            # keep the permuted order inside the chunk, not the sorted one used for the read
            chunk = chunk[np.argsort(np.argsort(rows[start : start + 4096]))]
            data = chunk.tobytes()
            h.update(data)
            f.write(data)
    return len(rows), h.hexdigest()


# --- reading ---------------------------------------------------------------------------------------


class TokenRows:
    """Rows of several shard files addressed by one global row index; shape of a row: (seq_length,)."""

    def __init__(self, arrays: list[np.ndarray], seq_length: int, name: str = "rows") -> None:
        self.arrays = arrays
        self.seq_length = seq_length
        self.name = name
        self.offsets = np.cumsum([0] + [len(a) for a in arrays])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, i: int) -> np.ndarray:
        """Row `i` (negative counts from the end): (L,) in the file's dtype."""
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"sequence {i} out of range ({n})")
        shard = int(np.searchsorted(self.offsets, i, side="right")) - 1
        return np.asarray(self.arrays[shard][i - self.offsets[shard]])

    def __iter__(self) -> Iterator[np.ndarray]:
        for array in self.arrays:
            yield from array

    def take(self, indices: np.ndarray) -> np.ndarray:
        """Rows at `indices` → int64 array of shape (len(indices), seq_length)."""
        out = np.empty((len(indices), self.seq_length), dtype=np.int64)
        shard = np.searchsorted(self.offsets, indices, side="right") - 1
        for i, (s, idx) in enumerate(zip(shard, indices, strict=True)):
            out[i] = self.arrays[s][idx - self.offsets[s]]
        return out

    def head(self, limit: int | None = None) -> np.ndarray:
        """The first `limit` rows (all when None) in file order, (N, seq_length) int64; an empty split
        is an `InvalidInput`."""
        parts, have = [], 0
        for arr in self.arrays:
            take = arr if limit is None else arr[: limit - have]
            parts.append(np.asarray(take, dtype=np.int64))
            have += len(take)
            if limit is not None and have >= limit:
                break
        if have == 0:
            raise InvalidInput(f"shards: the Dataset has no {self.name} rows")
        return np.concatenate(parts)

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """`size` rows drawn uniformly with replacement, (size, seq_length) int64."""
        if len(self) == 0:
            raise InvalidInput(f"shards: the Dataset has no {self.name} rows")
        return self.take(rng.integers(0, len(self), size=size))

    def max_token_id(self, limit_rows: int = 4096) -> int:
        """Largest token id in the first rows of each file (a cheap tokenizer/vocab consistency check)."""
        return max((int(a[:limit_rows].max()) for a in self.arrays if a.size), default=-1)


class Shards:
    """An opened shards directory: its `index`, and each split's rows memory-mapped (no copy)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.index = ShardIndex.load(self.root)
        self.train = self.rows("train")
        self.validation = self.rows("validation")

    @property
    def seq_length(self) -> int:
        return self.index.seq_length

    def rows(self, split: str) -> TokenRows:
        """All rows of a split, as one indexable view over its files."""
        arrays = []
        for entry in self.index.split(split):
            try:
                flat = np.memmap(self.root / entry.file, dtype=self.index.numpy_dtype, mode="r")
            except (OSError, ValueError) as exc:
                raise InvalidInput(f"shards {self.root}: {entry.file}: {exc}") from None
            if flat.size % self.index.seq_length:
                raise InvalidInput(
                    f"shards: {entry.file} holds {flat.size} tokens, not a multiple of "
                    f"seq_length {self.index.seq_length}"
                )
            arrays.append(flat.reshape(-1, self.index.seq_length))
        return TokenRows(arrays, self.index.seq_length, split)

    def verify(self) -> None:
        """Check every file's sha256 against the index (an `InvalidInput` naming the file)."""
        for entry in self.index.train + self.index.validation:
            h = hashlib.sha256()
            with open(self.root / entry.file, "rb") as f:
                while chunk := f.read(1 << 22):
                    h.update(chunk)
            if h.hexdigest() != entry.sha256:
                raise InvalidInput(f"{self.root / entry.file}: sha256 mismatch")
