"""`python -m lmforge.trainer dataset`: the Dataset stage.

Every worker (an Indexed Job pod, or a local process) curates its slice of the input files (file i
goes to worker i mod N) and commits it as `work/worker-<i>/`. Every worker then waits for all slices
and runs its partition of the global exact + near dedup (`dedup_parts`: hashes, LSH buckets and
signature columns split among the workers, so no process holds every signature); worker 0 merges the
outcome, trains the tokenizer, tokenizes and packs, writes the
shards, and publishes `tokenizer`, `card` and, last, `shards`. Each step is keyed by a fingerprint
of its inputs and settings, so a restart skips what is already done (committed worker slices, the
merge, the tokenizer, finished shards) and redoes anything whose inputs changed.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from lmforge.api.dataset import Dataset, DatasetSpec
from lmforge.store import (
    MANIFEST_NAME,
    ArtifactWriter,
    is_complete,
    read_manifest,
)
from lmforge.trainer.artifacts import fetch, publish
from lmforge.trainer.context import StageContext, StageOutcome
from lmforge.trainer.dataset import card as card_mod
from lmforge.trainer.dataset.build import tokenize_and_pack, training_sample, weighted, write_all_shards
from lmforge.trainer.dataset.dedup_parts import wait_for
from lmforge.trainer.dataset.merge import kept_documents
from lmforge.trainer.dataset.readers import InputFile, list_files
from lmforge.trainer.dataset.tokenizer import load_existing, special_ids, train
from lmforge.trainer.dataset.work import (
    WAIT_ENV,
    MergeStore,
    committed,
    run_dedup_partition,
    run_worker,
    wait_seconds,
)
from lmforge.trainer.shards import FORMAT, INDEX, ShardIndex, dtype_for


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def worker_fingerprint(spec: DatasetSpec, files: list[InputFile], index: int, count: int) -> str:
    """What a worker's slice depends on: curation settings and its files."""
    curation = spec.model_dump(
        mode="json", include={"sources", "opt_out", "cleaning", "quality", "toxicity", "language", "pii", "dedup"}
    )
    return _digest(["worker-v1", curation, [f.location for f in files], index, count])


def _wait_for_workers(ctx: StageContext, fingerprints: list[str]) -> None:
    """Poll the store until every worker's slice is committed with the expected fingerprint."""
    wait_for(
        ctx.output,
        {f"work/worker-{i}": fp for i, fp in enumerate(fingerprints)},
        wait_seconds(),
        "dataset workers",
        lambda message: ctx.reporter.progress(0, message=message, unit="doc"),
        hint=f" to commit their slices under {ctx.uri('work')} (set {WAIT_ENV} to wait longer)",
    )


def _tokenizer(ctx: StageContext, spec: DatasetSpec, merged: MergeStore, fingerprint: str) -> Path:
    """The tokenizer directory: `work/tokenizer` if already built under `fingerprint`, else trained
    (or loaded) now and committed there."""
    key = "work/tokenizer"
    manifest = read_manifest(ctx.output, key)
    if manifest and manifest.metadata.get("fingerprint") == fingerprint and is_complete(ctx.output, key):
        return fetch(ctx.uri(key))
    out = ctx.work_dir / "tokenizer"
    if spec.tokenizer.from_uri:
        src = ctx.resolve(spec.tokenizer.from_uri)
        local = Path(src) if "://" not in src else fetch(src, require_manifest=False)
        load_existing(local, spec.tokenizer, out)
    else:
        fraction = min(1.0, spec.tokenizer.train_bytes / max(merged.kept_bytes, 1))
        train(training_sample(kept_documents(merged.dirs, merged.keep), fraction, spec.seed), spec.tokenizer, out)
    writer = ArtifactWriter(ctx.output, key, clear_existing=True)
    writer.add_dir(out)
    writer.commit("tokenizer", {"fingerprint": fingerprint})
    return out


def _pack(
    ctx: StageContext, spec: DatasetSpec, merged: MergeStore, tok_dir: Path, ids: dict[str, int], fingerprint: str
) -> dict[str, Any]:
    """Tokenize and pack into `<work_dir>/packed.bin`, unless a finished one for `fingerprint` is there."""
    from tokenizers import Tokenizer

    packed, marker = ctx.work_dir / "packed.bin", ctx.work_dir / "packed.json"
    if marker.is_file():
        done = json.loads(marker.read_text())
        size = done["rows"] * spec.seq_length * dtype_for(ids["vocab_size"]).itemsize
        if done["fingerprint"] == fingerprint and packed.is_file() and packed.stat().st_size == size:
            return dict(done)
    tokenizer = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    weights = {s.name: s.weight for s in spec.sources}
    total = merged.kept_documents

    def progress(done: int) -> None:
        ctx.reporter.progress(done, total, unit="doc", message="tokenizing")

    docs = weighted(kept_documents(merged.dirs, merged.keep), weights, spec.seed)
    stats = tokenize_and_pack(docs, tokenizer, packed, spec.seq_length, ids["vocab_size"], ids["eos_id"], progress)
    done = {
        "fingerprint": fingerprint,
        "rows": stats.rows,
        "tokens": stats.tokens,
        "tail": stats.tail,
        "documents": stats.documents,
        "bytes": stats.bytes,
        "seconds": stats.seconds,
        "tokens_by_source": stats.tokens_by_source,
    }
    marker.write_text(json.dumps(done))
    return done


def run(ctx: StageContext) -> StageOutcome:
    resource = ctx.resource
    assert isinstance(resource, Dataset)
    spec = resource.spec
    started = time.monotonic()
    worker, count = ctx.spec.worker.index, ctx.spec.worker.count
    files = list_files(spec.sources, [ctx.resolve(s.uri) for s in spec.sources])
    fingerprints = [worker_fingerprint(spec, files[i::count], i, count) for i in range(count)]
    mine = run_worker(ctx, spec, files[worker::count], fingerprints[worker])
    # Every worker takes part in the global dedup (its partition of hashes, buckets and signature
    # columns); worker 0 then merges the outcome and builds the dataset alone.
    _wait_for_workers(ctx, fingerprints)
    merge_fp = _digest(["merge-v1", fingerprints])
    if not committed(ctx, "work/merge", merge_fp):
        run_dedup_partition(ctx, spec, merge_fp)
    if worker != 0:
        return StageOutcome({}, mine)
    merged = MergeStore.load_or_run(ctx, spec, count, merge_fp)
    tok_fp = _digest(["tokenizer-v1", merged.fingerprint, spec.tokenizer.model_dump(mode="json"), spec.seed])
    tok_dir = _tokenizer(ctx, spec, merged, tok_fp)
    ids = special_ids(tok_dir)
    pack_fp = _digest(["pack-v1", tok_fp, spec.seq_length, spec.seed, [s.weight for s in spec.sources]])
    packed = _pack(ctx, spec, merged, tok_dir, ids, pack_fp)
    shard_fp = _digest(["shards-v1", pack_fp, spec.validation_fraction, spec.shard_sequences])
    # From here on the old shards artifact (if any) is no longer complete; shards of another plan go.
    ctx.output.delete_prefix(f"shards/{MANIFEST_NAME}")
    plan_key = "work/shards-plan.json"
    if not ctx.output.exists(plan_key) or ctx.output.get_bytes(plan_key).decode() != shard_fp:
        ctx.output.delete_prefix("shards")
        ctx.output.delete_prefix("work/shards-done")
        ctx.output.put_bytes(plan_key, shard_fp.encode())
    split_index, files_written = write_all_shards(
        ctx.output,
        ctx.work_dir / "packed.bin",
        packed["rows"],
        spec.seq_length,
        ids["vocab_size"],
        spec.validation_fraction,
        spec.seed,
        spec.shard_sequences,
        shard_fp,
        ctx.work_dir / "shards",
    )
    train_seqs = sum(e.sequences for e in split_index["train"])
    val_seqs = sum(e.sequences for e in split_index["validation"])
    index = ShardIndex(
        format=FORMAT,
        dtype=dtype_for(ids["vocab_size"]).name,
        seq_length=spec.seq_length,
        vocab_size=ids["vocab_size"],
        bos_id=ids["bos_id"],
        eos_id=ids["eos_id"],
        pad_id=ids["pad_id"],
        train=split_index["train"],
        validation=split_index["validation"],
        tokens={"train": train_seqs * spec.seq_length, "validation": val_seqs * spec.seq_length},
        packed_tokens=packed["tokens"],
        dropped_tail_tokens=packed["tail"],
        seed=spec.seed,
    )
    elapsed = max(time.monotonic() - started, 1e-9)
    card = merged.card(resource.metadata.name, spec, packed, index, ids, tok_dir)
    card_dir = ctx.work_dir / "card"
    card_mod.write(card, card_dir)
    artifacts = {
        "tokenizer": publish(ctx, "tokenizer", tok_dir, "tokenizer", {"vocabSize": ids["vocab_size"]}),
        "card": publish(ctx, "card", card_dir, "dataset-card", {"documents": merged.kept_documents}),
    }
    # The shards were uploaded one by one (resumable); the index goes last, then the manifest.
    writer = ArtifactWriter(ctx.output, "shards")
    for name, entry in files_written.items():
        writer.add_uploaded(name, entry)
    writer.add_bytes(INDEX, index.to_bytes())
    writer.commit("dataset-shards", {"trainSequences": train_seqs, "validationSequences": val_seqs})
    artifacts["shards"] = ctx.uri("shards")
    read_docs, read_bytes = merged.read_totals()
    metrics: dict[str, float] = {
        "documents": merged.kept_documents,
        "tokens": packed["tokens"],
        "train_sequences": train_seqs,
        "validation_sequences": val_seqs,
        "bytes": read_bytes,
        "documents_read": read_docs,
        "docs_per_second": read_docs / elapsed,
        "bytes_per_second": read_bytes / elapsed,
        "tokens_per_second_tokenize": packed["tokens"] / max(packed["seconds"], 1e-9),
    }
    metrics.update({f"dropped_{k}": v for k, v in merged.dropped_totals().items()})
    ctx.reporter.progress(merged.kept_documents, merged.kept_documents, unit="doc", metrics=metrics, force=True)
    return StageOutcome(artifacts, metrics)
