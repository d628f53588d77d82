"""The global merge: all workers' intermediates → which documents survive exact and near dedup.

Each worker directory holds, in its read order: `keys.npy` (global document ids, ascending),
`exact.npy`, `sources.npy`, `nbytes.npy`, `sigs.bin` (raw uint32 rows of num_perm) and the kept
texts in `docs.jsonl.zst`. The merge orders everything by global id, so the outcome does not depend
on how files were split among workers, and writes one boolean keep-mask per worker.
"""

from __future__ import annotations

import heapq
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.api.dataset import DatasetSpec
from lmforge.trainer.dataset.curate import SourceCounts, add_counts
from lmforge.trainer.dataset.dedup import exact_duplicates, lsh_params, near_duplicates

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


def merge(worker_dirs: list[Path], spec: DatasetSpec, scratch: Path, source_names: list[str]) -> MergeResult:
    """Global exact + near dedup across every worker's intermediate."""
    stats = [load_worker(d) for d in worker_dirs]
    keys = [np.load(d / "keys.npy") for d in worker_dirs]
    sizes = [len(k) for k in keys]
    all_keys = np.concatenate(keys) if keys else np.zeros(0, dtype=np.int64)
    order = np.argsort(all_keys, kind="stable")  # global position -> concatenated position
    n = len(all_keys)
    exact = np.concatenate([np.load(d / "exact.npy") for d in worker_dirs])[order]
    sources = np.concatenate([np.load(d / "sources.npy") for d in worker_dirs])[order]
    nbytes = np.concatenate([np.load(d / "nbytes.npy") for d in worker_dirs])[order]

    drop_exact = exact_duplicates(exact) if spec.dedup.exact else np.zeros(n, dtype=bool)
    near = spec.dedup.near
    bands, rows = lsh_params(near)
    drop_near = np.zeros(n, dtype=bool)
    clusters = candidates = 0
    if near.enabled and n:
        # Signatures in global order, on disk: (n, num_perm) uint32, memory-mapped.
        scratch.mkdir(parents=True, exist_ok=True)
        path = scratch / "sigs-global.u32"
        glob = np.memmap(path, dtype=np.uint32, mode="w+", shape=(n, near.num_perm))
        inverse = np.empty(n, dtype=np.int64)
        inverse[order] = np.arange(n)  # concatenated position -> global position
        offset = 0
        for d, size in zip(worker_dirs, sizes, strict=True):
            if size:
                sig = np.memmap(d / SIGS, dtype=np.uint32, mode="r").reshape(size, near.num_perm)
                for start in range(0, size, 65536):
                    glob[inverse[offset + start:offset + min(size, start + 65536)]] = sig[start:start + 65536]
            offset += size
        glob.flush()
        result = near_duplicates(glob, bands, rows, near.threshold, alive=~drop_exact)
        drop_near, clusters, candidates = result.drop, result.clusters, result.candidate_pairs
        del glob
        path.unlink(missing_ok=True)

    counts: dict[str, SourceCounts] = {}
    for s in stats:
        add_counts(counts, s["counts"])
    for i, name in enumerate(source_names):
        c = counts.setdefault(name, SourceCounts())
        mine = sources == i
        for step, dropped, after in (("exact_dedup", drop_exact, ~drop_exact),
                                     ("near_dedup", drop_near, ~drop_exact & ~drop_near)):
            gone = mine & dropped
            if gone.any():
                c.dropped[step] = [int(gone.sum()), int(nbytes[gone].sum())]
            kept = mine & after
            c.steps[step] = [int(kept.sum()), int(nbytes[kept].sum())]
    keep_global = ~drop_exact & ~drop_near
    keep_concat = np.empty(n, dtype=bool)
    keep_concat[order] = keep_global
    bounds = np.cumsum([0, *sizes])
    pii: dict[str, int] = {}
    for s in stats:
        for k, v in s["pii"].items():
            pii[k] = pii.get(k, 0) + int(v)
    return MergeResult(
        keep=[keep_concat[bounds[i]:bounds[i + 1]] for i in range(len(sizes))], counts=counts, pii=pii,
        exact_removed=int(drop_exact.sum()), near_removed=int(drop_near.sum()), near_clusters=clusters,
        candidate_pairs=candidates, bands=bands, rows=rows, worker_stats=stats,
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
