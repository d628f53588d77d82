"""The per-worker pass: read a slice of the input files, drop opted-out, bad, low-quality, toxic,
off-language and contaminated documents, clean and redact the rest, and compute their exact hashes
and MinHash signatures.

Counts are kept per source and per step (documents and bytes remaining after each step, and drops
by reason), so that summed over workers they add up: for every source,
`read = Σ dropped + remaining after the last step`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import numpy as np

from lmforge.api.dataset import DatasetSpec, PiiType
from lmforge.trainer.dataset import quality
from lmforge.trainer.dataset.clean import Cleaner
from lmforge.trainer.dataset.decontam import Decontaminator
from lmforge.trainer.dataset.dedup import MinHasher, exact_hash
from lmforge.trainer.dataset.language import identify
from lmforge.trainer.dataset.pii import Redactor
from lmforge.trainer.dataset.readers import Document
from lmforge.trainer.dataset.sourcing import OptOutList
from lmforge.trainer.dataset.toxicity import ToxicityScorer

SIGNATURE_BATCH = 128
"""Documents per batched MinHash computation (bounds the (shingles, num_perm) work array to ~20 MB)."""

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

    def __init__(self, spec: DatasetSpec, optout: OptOutList, read_text: Callable[[str], str],
                 decontaminator: Decontaminator | None) -> None:
        self.spec = spec
        self.optout = optout
        self.domains = {s.name: s.domain for s in spec.sources}
        self.cleaner = Cleaner(spec.cleaning)
        self.toxicity = ToxicityScorer(spec.toxicity, read_text) if spec.toxicity.enabled else None
        self.redactor = Redactor(list(spec.pii.types)) if spec.pii.enabled else Redactor([])
        self.decontaminator = decontaminator
        self.counts: dict[str, SourceCounts] = {s.name: SourceCounts() for s in spec.sources}

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
        return text


@dataclass
class WorkerOutput:
    """What a worker writes next to its kept documents: per-document arrays, in read order."""

    keys: list[int] = field(default_factory=list)
    exact: list[int] = field(default_factory=list)
    sources: list[int] = field(default_factory=list)
    nbytes: list[int] = field(default_factory=list)


def curate(docs: Iterable[Document], curator: Curator, hasher: MinHasher | None, source_ids: dict[str, int],
           write_doc: Callable[[int, str, str], None], sig_file: BinaryIO,
           progress: Callable[[int, int, float], None]) -> WorkerOutput:
    """Run `curator` over `docs`; kept ones go to `write_doc(key, source, text)`, their signatures
    to `sig_file` as raw uint32 rows of num_perm. `progress(docs, bytes, elapsed_s)` is called every
    1,000 documents."""
    out = WorkerOutput()
    start = time.monotonic()
    seen = read_bytes = 0
    pending: list[str] = []  # kept texts whose signatures are computed as one batch

    def flush() -> None:
        if hasher is not None and pending:
            sig_file.write(hasher.signatures(pending).tobytes())
        pending.clear()

    for doc in docs:
        seen += 1
        read_bytes += doc.nbytes
        text = curator(doc)
        if text is not None:
            key = doc_key(doc.file_index, doc.row)
            out.keys.append(key)
            out.exact.append(exact_hash(text))
            out.sources.append(source_ids[doc.source])
            out.nbytes.append(len(text.encode("utf-8")))
            pending.append(text)
            if len(pending) >= SIGNATURE_BATCH:
                flush()
            write_doc(key, doc.source, text)
        if seen % 1000 == 0:
            progress(seen, read_bytes, time.monotonic() - start)
    flush()
    progress(seen, read_bytes, time.monotonic() - start)
    return out


def pii_counts(curator: Curator) -> dict[str, int]:
    """Redactions per PII type (every type listed, zero included)."""
    return {t.value: int(curator.redactor.counts.get(t.value, 0)) for t in PiiType}


def as_arrays(out: WorkerOutput) -> dict[str, np.ndarray]:
    """The per-document arrays to save: keys int64, exact uint64, sources int32, nbytes int64."""
    return {
        "keys": np.asarray(out.keys, dtype=np.int64),
        "exact": np.asarray(out.exact, dtype=np.uint64),
        "sources": np.asarray(out.sources, dtype=np.int32),
        "nbytes": np.asarray(out.nbytes, dtype=np.int64),
    }
