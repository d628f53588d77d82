"""The per-worker pass: read a slice of the input files, drop opted-out, bad, low-quality, toxic,
off-language and contaminated documents, clean and redact the rest, and compute their exact hashes
and MinHash signatures.

Counts are kept per source and per step (documents and bytes remaining after each step, and drops
by reason), so that summed over workers they add up: for every source,
`read = Σ dropped + remaining after the last step`.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from multiprocessing.pool import AsyncResult
from typing import Any, BinaryIO

import numpy as np

from lmforge.api.dataset import DatasetSpec, PiiType
from lmforge.trainer.dataset import quality
from lmforge.trainer.dataset.clean import Cleaner
from lmforge.trainer.dataset.decontam import Decontaminator
from lmforge.trainer.dataset.dedup import MinHasher, hash_tokens, normalized_tokens
from lmforge.trainer.dataset.language import identify
from lmforge.trainer.dataset.pii import Redactor
from lmforge.trainer.dataset.readers import Document
from lmforge.trainer.dataset.sourcing import OptOutList
from lmforge.trainer.dataset.toxicity import ToxicityScorer

STEPS = ("read", "opt_out", "decode", "clean", "quality", "toxicity", "language", "pii", "decontamination")
"""Worker steps in order; the merge adds `exact_dedup` and `near_dedup`."""


def doc_key(file_index: int, row: int) -> int:
    """Global document id: file order, then row (sorts like the input)."""
    return (file_index << 32) | row


@dataclass
class SourceCounts:
    """Documents/bytes remaining after each step, and dropped by reason, for one source."""

    steps: dict[str, list[int]] = field(default_factory=dict)  # step -> [documents, bytes]
    dropped: dict[str, list[int]] = field(default_factory=dict)  # reason -> [documents, bytes]

    def passed(self, step: str, nbytes: int) -> None:
        slot = self.steps.setdefault(step, [0, 0])
        slot[0] += 1
        slot[1] += nbytes

    def drop(self, reason: str, nbytes: int) -> None:
        slot = self.dropped.setdefault(reason, [0, 0])
        slot[0] += 1
        slot[1] += nbytes

    def wire(self) -> dict[str, Any]:
        return {"steps": self.steps, "dropped": self.dropped}


def add_counts(into: dict[str, SourceCounts], wire: dict[str, dict[str, Any]]) -> None:
    """Sum another worker's counts (as stored in its stats.json) into `into`."""
    for source, counts in wire.items():
        mine = into.setdefault(source, SourceCounts())
        for attr in ("steps", "dropped"):
            target: dict[str, list[int]] = getattr(mine, attr)
            for key, (docs, nbytes) in counts[attr].items():
                slot = target.setdefault(key, [0, 0])
                slot[0] += docs
                slot[1] += nbytes


class Curator:
    """Applies the spec's filters to one document at a time, counting what happens."""

    def __init__(
        self,
        spec: DatasetSpec,
        optout: OptOutList,
        read_text: Callable[[str], str],
        decontaminator: Decontaminator | None,
    ) -> None:
        self.spec = spec
        self.optout = optout
        self.domains = {s.name: s.domain for s in spec.sources}
        self.cleaner = Cleaner(spec.cleaning)
        self.toxicity = ToxicityScorer(spec.toxicity, read_text) if spec.toxicity.enabled else None
        self.redactor = Redactor(list(spec.pii.types)) if spec.pii.enabled else Redactor([])
        self.decontaminator = decontaminator
        self.counts: dict[str, SourceCounts] = {s.name: SourceCounts() for s in spec.sources}
        self.last_size = 0  # UTF-8 bytes of the last kept text

    def reset_counts(self) -> None:
        """Zero every counter (documents, PII redactions, boilerplate lines)."""
        self.counts = {name: SourceCounts() for name in self.counts}
        self.redactor.counts.clear()
        self.cleaner.lines_removed = 0

    def __call__(self, doc: Document) -> str | None:
        """The cleaned, redacted text, or None when the document is dropped (and counted)."""
        c = self.counts[doc.source]
        c.passed("read", doc.nbytes)
        if self.optout.blocked(doc.url, self.domains.get(doc.source)):
            c.drop("opt_out", doc.nbytes)
            return None
        c.passed("opt_out", doc.nbytes)
        if doc.problem is not None:
            c.drop(doc.problem, doc.nbytes)
            return None
        c.passed("decode", doc.nbytes)
        text = self.cleaner(doc.text)
        size = len(text.encode("utf-8"))
        if not text:
            c.drop("empty", doc.nbytes)
            return None
        c.passed("clean", size)
        if self.spec.quality.enabled:
            rule = quality.check(text, self.spec.quality)
            if rule is not None:
                c.drop(f"quality_{rule}", size)
                return None
        c.passed("quality", size)
        if self.toxicity is not None and self.toxicity.toxic(text):
            c.drop("toxicity", size)
            return None
        c.passed("toxicity", size)
        if self.spec.language.enabled:
            lang, score = identify(text)
            if lang not in self.spec.language.languages or score < self.spec.language.min_score:
                c.drop("language", size)
                return None
        c.passed("language", size)
        text = self.redactor(text)
        size = len(text.encode("utf-8"))
        c.passed("pii", size)
        if self.decontaminator is not None and self.decontaminator.contaminated(text):
            c.drop("decontamination", size)
            return None
        c.passed("decontamination", size)
        self.last_size = size
        return text


@dataclass
class WorkerOutput:
    """What a worker writes next to its kept documents: per-document arrays, in read order."""

    keys: list[int] = field(default_factory=list)
    exact: list[int] = field(default_factory=list)
    sources: list[int] = field(default_factory=list)
    nbytes: list[int] = field(default_factory=list)


@dataclass
class ChunkResult:
    """One chunk of documents curated: the kept ones' arrays, their JSON lines as one zstd frame,
    their signatures, and the counts of the chunk alone (summed by the caller)."""

    keys: list[int]
    exact: list[int]
    sources: list[int]
    nbytes: list[int]
    docs_zst: bytes  # one zstd frame of {"k", "s", "t"} JSON lines
    sigs: bytes  # raw uint32 rows of num_perm
    seen: int
    read_bytes: int
    counts: dict[str, dict[str, Any]]  # SourceCounts.wire() per source
    pii: dict[str, int]
    lines_removed: int


def curate_chunk(
    docs: list[Document], curator: Curator, hasher: MinHasher | None, source_ids: dict[str, int]
) -> ChunkResult:
    """Curate one chunk; the curator's counters are reset afterwards, so the result holds this chunk's
    counts only (the same whether chunks run in this process or in a pool)."""
    import zstandard

    keys: list[int] = []
    exact: list[int] = []
    sources: list[int] = []
    nbytes: list[int] = []
    words: list[list[str] | list[bytes]] = []  # normalized tokens per kept document
    lines: list[bytes] = []
    read_bytes = 0
    for doc in docs:
        read_bytes += doc.nbytes
        text = curator(doc)
        if text is None:
            continue
        key = doc_key(doc.file_index, doc.row)
        doc_words = normalized_tokens(text)
        keys.append(key)
        exact.append(hash_tokens(doc_words))
        sources.append(source_ids[doc.source])
        nbytes.append(curator.last_size)
        words.append(doc_words)
        lines.append(json.dumps({"k": key, "s": doc.source, "t": text}, ensure_ascii=False).encode())
    sigs = hasher.signatures_of_words(words).tobytes() if hasher is not None and words else b""
    docs_zst = zstandard.ZstdCompressor(level=3).compress(b"\n".join(lines) + b"\n") if lines else b""
    result = ChunkResult(
        keys,
        exact,
        sources,
        nbytes,
        docs_zst,
        sigs,
        len(docs),
        read_bytes,
        {name: c.wire() for name, c in curator.counts.items()},
        dict(curator.redactor.counts),
        curator.cleaner.lines_removed,
    )
    curator.reset_counts()
    return result


CHUNK = 256
"""Documents per chunk (~0.5 MB of text): the unit handed to a pool process."""

_POOL_STATE: tuple[Curator, MinHasher | None, dict[str, int]] | None = None


def _pool_init(curator: Curator, hasher: MinHasher | None, source_ids: dict[str, int], parent: int) -> None:
    """Pool process start-up (forked: the arguments are inherited, not pickled). The process dies
    with its parent, so a killed worker leaves no orphans behind."""
    global _POOL_STATE
    _POOL_STATE = (curator, hasher, source_ids)
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        # The parent died before prctl took effect. Compared with the parent's own pid, not with 1:
        # in a container the stage itself is PID 1 (every worker exited at once, and the pool
        # re-forked them forever, until the real-pod tests ran it).
        if os.getppid() != parent:
            os._exit(1)


def _pool_chunk(docs: list[Document]) -> ChunkResult:
    assert _POOL_STATE is not None
    return curate_chunk(docs, *_POOL_STATE)


def _chunks(docs: Iterable[Document]) -> Iterator[list[Document]]:
    chunk: list[Document] = []
    for doc in docs:
        chunk.append(doc)
        if len(chunk) >= CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


@dataclass
class Totals:
    """Counts summed over chunks."""

    counts: dict[str, SourceCounts] = field(default_factory=dict)
    pii: Counter[str] = field(default_factory=Counter)
    lines_removed: int = 0


def curate(
    docs: Iterable[Document],
    curator: Curator,
    hasher: MinHasher | None,
    source_ids: dict[str, int],
    docs_file: BinaryIO,
    sig_file: BinaryIO,
    progress: Callable[[int, int, float], None],
    processes: int = 1,
) -> tuple[WorkerOutput, Totals]:
    """Run `curator` over `docs` in chunks, in this process or in a pool of `processes` forked ones
    (output identical either way: results are written in read order). Kept documents go to
    `docs_file` as zstd frames of JSON lines, their signatures to `sig_file` as raw uint32 rows of
    num_perm. `progress(docs, bytes, elapsed_s)` is called after every chunk."""
    out = WorkerOutput()
    totals = Totals(counts={name: SourceCounts() for name in curator.counts})
    start = time.monotonic()
    seen = read_bytes = 0

    def take(r: ChunkResult) -> None:
        nonlocal seen, read_bytes
        out.keys += r.keys
        out.exact += r.exact
        out.sources += r.sources
        out.nbytes += r.nbytes
        docs_file.write(r.docs_zst)
        sig_file.write(r.sigs)
        add_counts(totals.counts, r.counts)
        totals.pii.update(r.pii)
        totals.lines_removed += r.lines_removed
        seen += r.seen
        read_bytes += r.read_bytes
        progress(seen, read_bytes, time.monotonic() - start)

    if processes <= 1:
        for chunk in _chunks(docs):
            take(curate_chunk(chunk, curator, hasher, source_ids))
        return out, totals
    import multiprocessing

    # Forked, so the curator (word lists, opt-out and decontamination indexes) is shared, not pickled.
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(processes, initializer=_pool_init, initargs=(curator, hasher, source_ids, os.getpid())) as pool:
        pending: deque[AsyncResult[ChunkResult]] = deque()
        for chunk in _chunks(docs):
            pending.append(pool.apply_async(_pool_chunk, (chunk,)))
            if len(pending) > 2 * processes:  # bounded read-ahead: memory stays at a few chunks
                take(pending.popleft().get())
        while pending:
            take(pending.popleft().get())
    return out, totals


def pii_counts(counts: Counter[str]) -> dict[str, int]:
    """Redactions per PII type (every type listed, zero included)."""
    return {t.value: int(counts.get(t.value, 0)) for t in PiiType}


def as_arrays(out: WorkerOutput) -> dict[str, np.ndarray]:
    """The per-document arrays to save: keys int64, exact uint64, sources int32, nbytes int64."""
    return {
        "keys": np.asarray(out.keys, dtype=np.int64),
        "exact": np.asarray(out.exact, dtype=np.uint64),
        "sources": np.asarray(out.sources, dtype=np.int32),
        "nbytes": np.asarray(out.nbytes, dtype=np.int64),
    }
