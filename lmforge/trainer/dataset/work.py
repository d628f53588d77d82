"""The stage's intermediate artifacts in the store: one slice per worker (`work/worker-<i>/`) and
the merge result (`work/merge/`), each manifest-committed with the fingerprint of its inputs so a
restart reuses it, and the card assembled from them."""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.api.dataset import DatasetSpec
from lmforge.store import ArtifactWriter, is_complete, read_manifest
from lmforge.trainer.artifacts import fetch
from lmforge.trainer.context import StageContext
from lmforge.trainer.dataset import decontam
from lmforge.trainer.dataset.card import source_table
from lmforge.trainer.dataset.curate import Curator, SourceCounts, as_arrays, curate, pii_counts
from lmforge.trainer.dataset.dedup import MinHasher
from lmforge.trainer.dataset.dedup_parts import (
    PREFIX,
    Exchange,
    Plan,
    components,
    exact_dropped,
    run_partition,
)
from lmforge.trainer.dataset.merge import DOCS, SIGS, STATS, merge
from lmforge.trainer.dataset.readers import InputFile, read_file, read_text
from lmforge.trainer.dataset.sourcing import OptOutList
from lmforge.trainer.shards import ShardIndex


def committed(ctx: StageContext, key: str, fingerprint: str) -> bool:
    manifest = read_manifest(ctx.output, key)
    return bool(manifest and manifest.metadata.get("fingerprint") == fingerprint and is_complete(ctx.output, key))


def _curator(ctx: StageContext, spec: DatasetSpec) -> Curator:
    def reader(what: str) -> Any:
        return lambda location: read_text(ctx.resolve(location), what)

    optout = OptOutList.from_spec(spec.opt_out, reader("optOut.files"))
    decon = None
    if spec.dedup.decontaminate is not None:
        inputs = {k: v.spec for k, v in ctx.spec.inputs.items()}
        decon = decontam.build(spec.dedup.decontaminate, inputs, reader("dedup.decontaminate"))
    return Curator(spec, optout, reader("toxicity.wordList"), decon)


WAIT_ENV = "LMFORGE_DATASET_WAIT_S"
"""Seconds a worker waits for the others' slices and dedup steps (default 6 hours)."""


def wait_seconds() -> float:
    return float(os.environ.get(WAIT_ENV, 6 * 3600))


def dedup_exchange(ctx: StageContext, fingerprint: str) -> Exchange:
    """The partitioned dedup's intermediates of this run (under `work/dedup/` in the run's store)."""
    return Exchange(
        ctx.output,
        fingerprint,
        ctx.work_dir / "dedup",
        wait_seconds(),
        lambda message: ctx.reporter.progress(0, message=message, unit="doc"),
    )


def run_dedup_partition(ctx: StageContext, spec: DatasetSpec, fingerprint: str) -> None:
    """This worker's share of the global dedup (`dedup_parts` steps 1-6), reading its own slice's
    arrays and signatures back from the store (so a restarted or rescheduled worker can do it)."""
    x = dedup_exchange(ctx, fingerprint)
    shutil.rmtree(x.scratch, ignore_errors=True)
    key = f"work/worker-{ctx.spec.worker.index}"
    local = x.scratch / "slice"
    local.mkdir(parents=True)

    def slice_file(name: str) -> Path:
        path = local / name
        if not path.exists():
            ctx.output.get_file(f"{key}/{name}", path)
        return path

    plan = Plan.from_spec(spec, ctx.spec.worker.count)
    run_partition(x, plan, ctx.spec.worker.index, slice_file)
    shutil.rmtree(x.scratch, ignore_errors=True)


PROCESSES_ENV = "LMFORGE_DATASET_PROCESSES"
"""Curation processes per worker; default: this process's CPU share (see `curation_processes`)."""


def _cgroup_cpus() -> float | None:
    """The container's CPU limit (cgroup v2 `cpu.max`), or None when unlimited or unknown."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    return None if quota == "max" else int(quota) / int(period)


def curation_processes() -> int:
    """How many processes curate this worker's documents: `LMFORGE_DATASET_PROCESSES` if set, else
    `OMP_NUM_THREADS` (the embedded runner sets it to the cores divided among the stage's local
    processes), else the cores this process may use (affinity, capped by a cgroup CPU limit: one
    pod per worker in a cluster)."""
    for name in (PROCESSES_ENV, "OMP_NUM_THREADS"):
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    limit = _cgroup_cpus()
    return max(1, min(cores, int(limit)) if limit is not None else cores)


def run_worker(ctx: StageContext, spec: DatasetSpec, files: list[InputFile], fingerprint: str) -> dict[str, float]:
    """Curate this worker's files into `work/worker-<i>/` (skipped if already committed); returns the
    worker's throughput metrics."""
    key = f"work/worker-{ctx.spec.worker.index}"
    if committed(ctx, key, fingerprint):
        ctx.reporter.progress(0, message=f"{key} already committed; skipping", unit="doc")
        return {}
    out = ctx.work_dir / "slice"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    curator = _curator(ctx, spec)
    hasher = MinHasher(spec.dedup.near) if spec.dedup.near.enabled else None
    source_ids = {s.name: i for i, s in enumerate(spec.sources)}
    start = time.monotonic()

    def progress(docs: int, nbytes: int, elapsed: float) -> None:
        rate = {"docs_per_second": docs / max(elapsed, 1e-9), "bytes_per_second": nbytes / max(elapsed, 1e-9)}
        ctx.reporter.progress(docs, unit="doc", metrics=rate, message="curating")

    def documents() -> Any:
        for f in files:
            yield from read_file(f, ctx.work_dir / "downloads")

    processes = curation_processes()
    with open(out / DOCS, "wb") as docs_file, open(out / SIGS, "wb") as sig_file:
        result, totals = curate(documents(), curator, hasher, source_ids, docs_file, sig_file, progress, processes)
    for name, array in as_arrays(result).items():
        np.save(out / f"{name}.npy", array)
    seconds = time.monotonic() - start
    counts = {name: c.wire() for name, c in totals.counts.items()}
    read_docs = sum(c.steps.get("read", [0, 0])[0] for c in totals.counts.values())
    read_bytes = sum(c.steps.get("read", [0, 0])[1] for c in totals.counts.values())
    stats = {
        "worker": ctx.spec.worker.index,
        "files": [f.location for f in files],
        "counts": counts,
        "pii": pii_counts(totals.pii),
        "boilerplate_lines": totals.lines_removed,
        "seconds": seconds,
        "processes": processes,
        "documents": read_docs,
        "bytes": read_bytes,
        "settings": {
            "optOut": curator.optout.settings(),
            "toxicity": curator.toxicity.settings() if curator.toxicity else None,
            "decontamination": curator.decontaminator.settings() if curator.decontaminator else None,
        },
    }
    (out / STATS).write_text(json.dumps(stats))
    writer_ = ArtifactWriter(ctx.output, key, clear_existing=True)
    writer_.add_dir(out)
    writer_.commit("dataset-slice", {"fingerprint": fingerprint})
    shutil.rmtree(out, ignore_errors=True)
    return {
        "documents_read": read_docs,
        "bytes": read_bytes,
        "docs_per_second": read_docs / max(seconds, 1e-9),
        "bytes_per_second": read_bytes / max(seconds, 1e-9),
    }


@dataclass
class MergeStore:
    """The merge's result, persisted at `work/merge/` (keep-masks + statistics)."""

    fingerprint: str
    dirs: list[Path]
    keep: list[np.ndarray]
    stats: dict[str, Any]

    @classmethod
    def load_or_run(cls, ctx: StageContext, spec: DatasetSpec, count: int, fingerprint: str) -> MergeStore:
        dirs = [fetch(ctx.uri(f"work/worker-{i}")) for i in range(count)]
        key = "work/merge"
        if committed(ctx, key, fingerprint):
            local = fetch(ctx.uri(key))
            keep = [np.load(local / f"keep-{i}.npy") for i in range(count)]
            return cls(fingerprint, dirs, keep, json.loads((local / "merge.json").read_text()))
        ctx.reporter.progress(0, message="merging worker slices (global dedup)", unit="doc", force=True)
        names = [s.name for s in spec.sources]
        x = dedup_exchange(ctx, fingerprint)
        plan = Plan.from_spec(spec, count)
        near = components(x, plan)
        r = merge(dirs, names, lambda i: exact_dropped(x, plan, i), near, plan.bands, plan.rows)
        kept_bytes = sum(int(np.load(d / "nbytes.npy")[k].sum()) for d, k in zip(dirs, r.keep, strict=True))
        stats = {
            "counts": {n: c.wire() for n, c in r.counts.items()},
            "pii": r.pii,
            "exact_removed": r.exact_removed,
            "near_removed": r.near_removed,
            "near_clusters": r.near_clusters,
            "candidate_pairs": r.candidate_pairs,
            "bands": r.bands,
            "rows": r.rows,
            "kept_documents": int(sum(int(k.sum()) for k in r.keep)),
            "kept_bytes": kept_bytes,
            "boilerplate_lines": sum(s["boilerplate_lines"] for s in r.worker_stats),
            "settings": r.worker_stats[0]["settings"] if r.worker_stats else {},
            "workers": [
                {
                    "worker": s["worker"],
                    "files": len(s["files"]),
                    "documents": s["documents"],
                    "bytes": s["bytes"],
                    "seconds": s["seconds"],
                }
                for s in r.worker_stats
            ],
        }
        out = ctx.work_dir / "merge"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        for i, k in enumerate(r.keep):
            np.save(out / f"keep-{i}.npy", k)
        (out / "merge.json").write_text(json.dumps(stats))
        writer = ArtifactWriter(ctx.output, key, clear_existing=True)
        writer.add_dir(out)
        writer.commit("dataset-merge", {"fingerprint": fingerprint})
        ctx.output.delete_prefix(PREFIX)  # every worker is past its last dedup step (worker 0 waited for them)
        return cls(fingerprint, dirs, r.keep, stats)

    @property
    def kept_documents(self) -> int:
        return int(self.stats["kept_documents"])

    @property
    def kept_bytes(self) -> int:
        return int(self.stats["kept_bytes"])

    def counts(self) -> dict[str, SourceCounts]:
        return {n: SourceCounts(steps=c["steps"], dropped=c["dropped"]) for n, c in self.stats["counts"].items()}

    def read_totals(self) -> tuple[int, int]:
        reads = [c["steps"].get("read", [0, 0]) for c in self.stats["counts"].values()]
        return sum(r[0] for r in reads), sum(r[1] for r in reads)

    def dropped_totals(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for c in self.stats["counts"].values():
            for reason, (docs, _bytes) in c["dropped"].items():
                out[reason] = out.get(reason, 0) + docs
        return out

    def card(
        self,
        name: str,
        spec: DatasetSpec,
        packed: dict[str, Any],
        index: ShardIndex,
        ids: dict[str, int],
        tok_dir: Path,
    ) -> dict[str, Any]:
        """card.json's content."""
        s = self.stats
        sources = source_table(
            self.counts(),
            packed["tokens_by_source"],
            {x.name: x.license for x in spec.sources},
            {x.name: x.uri for x in spec.sources},
            {x.name: x.weight for x in spec.sources},
        )
        read_docs, read_bytes = self.read_totals()
        near = spec.dedup.near
        train_seqs = sum(e.sequences for e in index.train)
        val_seqs = sum(e.sequences for e in index.validation)
        return {
            "name": name,
            "summary": (
                f"{read_docs} documents ({read_bytes} bytes) read from {len(spec.sources)} source(s); "
                f"{self.kept_documents} kept ({self.kept_bytes} bytes), {packed['tokens']} tokens, "
                f"{train_seqs} training and {val_seqs} validation sequences."
            ),
            "sources": sources,
            "totals": {
                "read": {"documents": read_docs, "bytes": read_bytes},
                "kept": {"documents": self.kept_documents, "bytes": self.kept_bytes},
                "dropped": self.dropped_totals(),
            },
            "pii": {"types": [t.value for t in spec.pii.types] if spec.pii.enabled else [], "redactions": s["pii"]},
            "cleaning": {"boilerplateLinesRemoved": s["boilerplate_lines"]},
            "dedup": {
                "exact": {"enabled": spec.dedup.exact, "removed": s["exact_removed"]},
                "near": {
                    "enabled": near.enabled,
                    "removed": s["near_removed"],
                    "clusters": s["near_clusters"],
                    "candidatePairs": s["candidate_pairs"],
                    "numPerm": near.num_perm,
                    "shingleSize": near.shingle_size,
                    "bands": s["bands"],
                    "rows": s["rows"],
                    "threshold": near.threshold,
                    "implementation": "datasketch MinHash (affine32) + banded LSH with signature verification",
                },
            },
            "tokenizer": {
                "type": "byte-level BPE (Hugging Face tokenizers)",
                "vocabSize": ids["vocab_size"],
                "specialTokens": spec.tokenizer.special_tokens,
                "trained": spec.tokenizer.from_uri is None,
                "fromUri": spec.tokenizer.from_uri,
                "trainBytes": min(spec.tokenizer.train_bytes, self.kept_bytes),
                "files": sorted(p.name for p in tok_dir.iterdir() if p.is_file()),
            },
            "shards": {
                "format": index.format,
                "dtype": index.dtype,
                "seqLength": spec.seq_length,
                "trainSequences": train_seqs,
                "validationSequences": val_seqs,
                "seed": spec.seed,
                "tokens": packed["tokens"],
                "droppedTailTokens": packed["tail"],
                "validationFraction": spec.validation_fraction,
            },
            "workers": s["workers"],
            "settings": spec.model_dump(mode="json", by_alias=True, exclude={"compute"}),
            "effectiveSettings": s["settings"],
        }
