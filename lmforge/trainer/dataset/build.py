"""From surviving documents to shards: mixing weights, tokenizer training sample, parallel
tokenization (`encode_batch`, multi-threaded in Rust), packing, and resumable shard writing.

Shards go straight to their final keys under `shards/`; after each one a small marker
`work/shards-done/<file>.json` records its size and hash under the plan's fingerprint, so a restart
skips finished shards. The artifact's manifest is written last, by the stage, after every shard.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.store import ArtifactNotFound, FileEntry, Store
from lmforge.trainer.shards import Packer, ShardEntry, dtype_for, plan_shards, write_shard

BATCH = 1024  # documents per encode_batch call
SWITCH_INTERVAL_S = 0.0002  # GIL switch interval while the encode and packing threads overlap


def _unit(seed: int, key: int) -> float:
    """A uniform [0, 1) draw fixed by (seed, document id): the same in every process."""
    digest = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64


def repeats(weight: float, seed: int, key: int) -> int:
    """How many times a document enters the token stream under its source's mixing weight."""
    whole = int(weight)
    return whole + (1 if _unit(seed, key) < weight - whole else 0)


def weighted(
    docs: Iterable[tuple[int, str, str]], weights: dict[str, float], seed: int
) -> Iterator[tuple[int, str, str]]:
    for key, source, text in docs:
        for _ in range(repeats(weights[source], seed, key)):
            yield key, source, text


def training_sample(docs: Iterable[tuple[int, str, str]], fraction: float, seed: int) -> Iterator[str]:
    """Texts for tokenizer training: each document with probability `fraction` (seeded)."""
    for key, _source, text in docs:
        if fraction >= 1 or _unit(seed + 1, key) < fraction:
            yield text


@dataclass
class PackStats:
    rows: int = 0
    tokens: int = 0
    tail: int = 0
    documents: int = 0
    bytes: int = 0
    seconds: float = 0.0
    tokens_by_source: dict[str, int] = field(default_factory=dict)


def tokenize_and_pack(
    docs: Iterable[tuple[int, str, str]],
    tokenizer: Any,
    out_path: Path,
    seq_length: int,
    vocab_size: int,
    eos_id: int,
    progress: Callable[[int], None] | None = None,
) -> PackStats:
    """Tokenize in batches (parallel inside `encode_batch`), append EOS, pack into rows of L in a raw
    file; returns the counts. The next batch is encoded in a background thread (the Rust side releases
    the GIL) while the current one is packed and the next texts are read, so packing and reading hide
    behind tokenization.

    The encode thread needs the GIL twice per batch (to read the texts in and to wrap the encodings),
    while the packing thread is running Python; at the default 5 ms switch interval each hand-over
    costs up to 5 ms of a ~50 ms batch, which made the overlap slower than a bare serial encode. The
    interval is shortened for the duration of the call and restored afterwards."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    try:
        return _tokenize_and_pack(docs, tokenizer, out_path, seq_length, vocab_size, eos_id, progress)
    finally:
        sys.setswitchinterval(previous)


def _tokenize_and_pack(
    docs: Iterable[tuple[int, str, str]],
    tokenizer: Any,
    out_path: Path,
    seq_length: int,
    vocab_size: int,
    eos_id: int,
    progress: Callable[[int], None] | None,
) -> PackStats:
    from concurrent.futures import Future, ThreadPoolExecutor

    stats = PackStats()
    start = time.monotonic()

    def encode(batch: list[tuple[str, str]]) -> tuple[list[str], list[Any]]:
        # Only the Rust call here (it releases the GIL); the ids lists are built by the packing thread,
        # so the two threads do not hand the GIL back and forth (a waiting thread loses up to the 5 ms
        # switch interval each time) while the encoder's cores stay busy.
        return [src for src, _ in batch], tokenizer.encode_batch_fast([t for _, t in batch], add_special_tokens=False)

    with open(out_path, "wb") as f, ThreadPoolExecutor(max_workers=1) as pool:
        packer = Packer(f, seq_length, dtype_for(vocab_size), eos_id)
        in_flight: Future[tuple[list[str], list[Any]]] | None = None

        def pack(done: Future[tuple[list[str], list[Any]]]) -> None:
            sources, encodings = done.result()
            ids = [e.ids for e in encodings]
            packer.add(ids)
            for source, one in zip(sources, ids, strict=True):
                stats.tokens_by_source[source] = stats.tokens_by_source.get(source, 0) + len(one) + 1
            stats.documents += len(ids)
            if progress:
                progress(stats.documents)

        batch: list[tuple[str, str]] = []
        for _key, source, text in docs:
            batch.append((source, text))
            stats.bytes += len(text.encode("utf-8"))
            if len(batch) >= BATCH:
                submitted = pool.submit(encode, batch)
                if in_flight is not None:
                    pack(in_flight)
                in_flight, batch = submitted, []
        if batch:
            submitted = pool.submit(encode, batch)
            if in_flight is not None:
                pack(in_flight)
            in_flight = submitted
        if in_flight is not None:
            pack(in_flight)
    stats.rows, stats.tokens, stats.tail = packer.rows, packer.tokens, packer.tail
    stats.seconds = time.monotonic() - start
    return stats


def write_all_shards(
    output: Store,
    packed_path: Path,
    rows: int,
    seq_length: int,
    vocab_size: int,
    validation_fraction: float,
    seed: int,
    shard_sequences: int,
    fingerprint: str,
    scratch: Path,
) -> tuple[dict[str, list[ShardEntry]], dict[str, FileEntry]]:
    """Write (or skip, when already done under `fingerprint`) every shard into `shards/`; returns the
    index entries per split and the manifest entries."""
    dtype = dtype_for(vocab_size)
    packed = (
        np.memmap(packed_path, dtype=dtype, mode="r").reshape(rows, seq_length)
        if rows
        else np.zeros((0, seq_length), dtype=dtype)
    )
    index: dict[str, list[ShardEntry]] = {"train": [], "validation": []}
    files: dict[str, FileEntry] = {}
    scratch.mkdir(parents=True, exist_ok=True)
    for split, name, part in plan_shards(rows, validation_fraction, seed, shard_sequences):
        marker_key = f"work/shards-done/{name}.json"
        entry: dict[str, Any] | None = None
        try:
            marker = json.loads(output.get_bytes(marker_key))
            sizes = output.sizes(f"shards/{name}")
            if marker.get("fingerprint") == fingerprint and sizes.get(f"shards/{name}") == marker["size"]:
                entry = marker
        except ArtifactNotFound:
            pass
        if entry is None:
            local = scratch / name
            sequences, sha = write_shard(packed, part, local)
            size = local.stat().st_size
            output.put_file(f"shards/{name}", local)
            local.unlink()
            entry = {"file": name, "sequences": sequences, "sha256": sha, "size": size, "fingerprint": fingerprint}
            output.put_bytes(marker_key, json.dumps(entry).encode())
        index[split].append(ShardEntry(file=name, sequences=entry["sequences"], sha256=entry["sha256"]))
        files[name] = FileEntry(size=entry["size"], sha256=entry["sha256"])
    return index, files
