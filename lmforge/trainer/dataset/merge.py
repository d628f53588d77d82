"""The global merge: all workers' intermediates → which documents survive exact and near dedup.

Each worker directory holds, in its read order: `keys.npy` (global document ids, ascending),
`exact.npy`, `sources.npy`, `nbytes.npy`, `sigs.bin` (raw uint32 rows of num_perm) and the kept
texts in `docs.jsonl.zst`. Which rows are duplicates is decided by the partitioned dedup
(`dedup_parts`, ordered by global id, so the outcome does not depend on how files were split among
workers); the merge turns that into one boolean keep-mask per worker and the card's counts.
"""

from __future__ import annotations

import heapq
import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.trainer.dataset.curate import SourceCounts, add_counts
from lmforge.trainer.dataset.dedup_parts import Components

DOCS = "docs.jsonl.zst"
SIGS = "sigs.bin"
STATS = "stats.json"


@dataclass
class MergeResult:
    """Keep-masks per worker (in its read order) plus the statistics for the card."""

    keep: list[np.ndarray]  # per worker: (n_w,) bool
    counts: dict[str, SourceCounts]
    pii: dict[str, int]
    exact_removed: int
    near_removed: int
    near_clusters: int
    candidate_pairs: int
    bands: int
    rows: int
    worker_stats: list[dict[str, Any]]


def load_worker(path: Path) -> dict[str, Any]:
    return json.loads((path / STATS).read_text())


def merge(
    worker_dirs: list[Path],
    source_names: list[str],
    exact_dropped: Callable[[int], np.ndarray],
    near: Components,
    bands: int,
    rows: int,
) -> MergeResult:
    """Keep-masks and the card's counts from the partitioned dedup's outcome (`dedup_parts`): the
    rows of each slice dropped as exact (`exact_dropped(slice)`) and as near duplicates. One slice is in
    memory at a time."""
    stats = [load_worker(d) for d in worker_dirs]
    counts: dict[str, SourceCounts] = {}
    for s in stats:
        add_counts(counts, s["counts"])
    # Per source and dedup step: [documents, bytes] dropped and kept, summed over slices.
    dropped = {step: np.zeros((len(source_names), 2), dtype=np.int64) for step in ("exact_dedup", "near_dedup")}
    kept = {step: np.zeros((len(source_names), 2), dtype=np.int64) for step in ("exact_dedup", "near_dedup")}
    keep: list[np.ndarray] = []
    exact_removed = 0
    for i, d in enumerate(worker_dirs):
        sources = np.load(d / "sources.npy")
        nbytes = np.load(d / "nbytes.npy")
        drop_exact = np.zeros(len(sources), dtype=bool)
        exact_rows = exact_dropped(i)
        exact_removed += len(exact_rows)
        drop_exact[exact_rows] = True
        drop_near = np.zeros(len(sources), dtype=bool)
        drop_near[near.dropped[i]] = True
        for step, gone, after in (
            ("exact_dedup", drop_exact, ~drop_exact),
            ("near_dedup", drop_near, ~drop_exact & ~drop_near),
        ):
            for mask, into in ((gone, dropped[step]), (after, kept[step])):
                np.add.at(into[:, 0], sources[mask], 1)
                np.add.at(into[:, 1], sources[mask], nbytes[mask])
        keep.append(~drop_exact & ~drop_near)
    for j, name in enumerate(source_names):
        c = counts.setdefault(name, SourceCounts())
        for step in ("exact_dedup", "near_dedup"):
            if dropped[step][j, 0]:
                c.dropped[step] = [int(dropped[step][j, 0]), int(dropped[step][j, 1])]
            c.steps[step] = [int(kept[step][j, 0]), int(kept[step][j, 1])]
    pii: dict[str, int] = {}
    for s in stats:
        for k, v in s["pii"].items():
            pii[k] = pii.get(k, 0) + int(v)
    return MergeResult(
        keep=keep,
        counts=counts,
        pii=pii,
        exact_removed=exact_removed,
        near_removed=int(sum(len(e) for e in near.dropped)),
        near_clusters=near.clusters,
        candidate_pairs=near.candidate_pairs,
        bands=bands,
        rows=rows,
        worker_stats=stats,
    )


def _worker_docs(path: Path, keep: np.ndarray) -> Iterator[tuple[int, str, str]]:
    import zstandard

    with open(path / DOCS, "rb") as raw:
        reader = io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True))
        for i, line in enumerate(reader):
            if keep[i]:
                row = json.loads(line)
                yield row["k"], row["s"], row["t"]


def kept_documents(worker_dirs: list[Path], keep: list[np.ndarray]) -> Iterator[tuple[int, str, str]]:
    """(key, source, text) of every surviving document, streamed in global order."""
    return heapq.merge(*(_worker_docs(d, k) for d, k in zip(worker_dirs, keep, strict=True)), key=lambda r: r[0])
