"""From surviving documents to shards: mixing weights, tokenizer training sample, parallel
tokenization (`encode_batch`, multi-threaded in Rust), packing, and resumable shard writing.

Shards go straight to their final keys under `shards/`; after each one a small marker
`work/shards-done/<file>.json` records its size and hash under the plan's fingerprint, so a restart
skips finished shards. The artifact's manifest is written last, by the stage, after every shard.
"""

from __future__ import annotations

import hashlib
import json
import operator
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
SHARD_WRITERS = 2  # shards gathered, hashed and uploaded at once (each holds one scratch file)
_IDS = operator.attrgetter("ids")  # an encoding's ids list (built by the getter on each access)


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

    def encode(texts: list[str]) -> list[Any]:
        # Only the Rust call here (it releases the GIL); the ids lists are built by the packing thread,
        # so the two threads do not hand the GIL back and forth (a waiting thread loses up to the 5 ms
        # switch interval each time) while the encoder's cores stay busy.
        encodings: list[Any] = tokenizer.encode_batch_fast(texts, add_special_tokens=False)
        return encodings

    with open(out_path, "wb") as f, ThreadPoolExecutor(max_workers=1) as pool:
        packer = Packer(f, seq_length, dtype_for(vocab_size), eos_id)
        in_flight: tuple[list[str], Future[list[Any]]] | None = None

        def pack(sources: list[str], done: Future[list[Any]]) -> None:
            # Everything here runs while the encode thread works on the next batch; it is the
            # per-token Python work (each ids list is built, copied into the stream, and freed, one
            # document at a time), so it is kept to one pass.
            encodings = done.result()
            lengths = [len(e) for e in encodings]  # token counts, without building the ids lists
            packer.add(map(_IDS, encodings), lengths)
            by_source = stats.tokens_by_source
            if len(set(sources)) == 1:
                by_source[sources[0]] = by_source.get(sources[0], 0) + sum(lengths) + len(lengths)
            else:
                for source, n in zip(sources, lengths, strict=True):
                    by_source[source] = by_source.get(source, 0) + n + 1
            stats.documents += len(lengths)
            if progress:
                progress(stats.documents)

        sources: list[str] = []
        texts: list[str] = []
        for _key, source, text in docs:
            sources.append(source)
            texts.append(text)
            # UTF-8 bytes; an ASCII str (a flag check) has as many as characters, without the copy
            stats.bytes += len(text) if text.isascii() else len(text.encode("utf-8"))
            if len(texts) >= BATCH:
                submitted = sources, pool.submit(encode, texts)
                if in_flight is not None:
                    pack(*in_flight)
                in_flight, sources, texts = submitted, [], []
        if texts:
            submitted = sources, pool.submit(encode, texts)
            if in_flight is not None:
                pack(*in_flight)
            in_flight = submitted
        if in_flight is not None:
            pack(*in_flight)
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
    index entries per split and the manifest entries.

    `SHARD_WRITERS` shards are in flight at once: the gather, the hash, the file writes and the
    store's upload (an fsync for a local store, a network transfer for S3) release the GIL, so one
    shard's upload overlaps the next one's gather. Each shard's marker is still written only after
    its own upload, so a restart skips exactly the finished shards, whatever the order they finished
    in; the first failure cancels the shards not yet started."""
    from concurrent.futures import ThreadPoolExecutor

    dtype = dtype_for(vocab_size)
    packed = (
        np.memmap(packed_path, dtype=dtype, mode="r").reshape(rows, seq_length)
        if rows
        else np.zeros((0, seq_length), dtype=dtype)
    )
    scratch.mkdir(parents=True, exist_ok=True)

    def one(name: str, part: np.ndarray) -> dict[str, Any]:
        marker_key = f"work/shards-done/{name}.json"
        try:
            marker = json.loads(output.get_bytes(marker_key))
            sizes = output.sizes(f"shards/{name}")
            if marker.get("fingerprint") == fingerprint and sizes.get(f"shards/{name}") == marker["size"]:
                return dict(marker)
        except ArtifactNotFound:
            pass
        local = scratch / name
        sequences, sha = write_shard(packed, part, local)
        size = local.stat().st_size
        output.put_file(f"shards/{name}", local)
        local.unlink()
        entry = {"file": name, "sequences": sequences, "sha256": sha, "size": size, "fingerprint": fingerprint}
        output.put_bytes(marker_key, json.dumps(entry).encode())
        return entry

    plan = plan_shards(rows, validation_fraction, seed, shard_sequences)
    pool = ThreadPoolExecutor(max_workers=SHARD_WRITERS, thread_name_prefix="shards")
    try:
        futures = [pool.submit(one, name, part) for _split, name, part in plan]
        entries = [future.result() for future in futures]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    index: dict[str, list[ShardEntry]] = {"train": [], "validation": []}
    files: dict[str, FileEntry] = {}
    for (split, name, _part), entry in zip(plan, entries, strict=True):
        index[split].append(ShardEntry(file=name, sequences=entry["sequences"], sha256=entry["sha256"]))
        files[name] = FileEntry(size=entry["size"], sha256=entry["sha256"])
    return index, files
