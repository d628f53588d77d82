"""Curation throughput and near-dup F1: the Dataset stage (read + clean + quality + toxicity + PII +
exact + MinHash/LSH dedup, 1 and 2 workers) against datatrove's MinHash dedup pipeline (signatures,
buckets, clusters, filter; 14 buckets × 8 hashes, 2 local workers) on the same generated corpus.

Ours is the real stage (`python -m lmforge.trainer dataset`, N worker processes, each curating with
cores / N processes as under `lmforge run`), timed until its merge
(global dedup) is committed; the tokenizer/shard steps that follow are measured by
`dataset_tokenize.py`, so the processes are stopped there.

The generated corpus is cached under `~/.cache/lmforge/bench/corpus-<mb>mb` (generation of 200 MB
takes minutes); `--no-cache` regenerates it in the temporary directory.

Usage: python benchmarks/dataset_curation.py [--mb 200] [--threshold 0.6] [--workers 1 2] [--no-cache]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dataset_corpus import f1, generate

REPO = Path(__file__).resolve().parents[1]


def file_ids(data: Path) -> list[list[int]]:
    return [[int(json.loads(line)["id"]) for line in open(p)] for p in sorted(data.glob("*.jsonl"))]


def run_ours(data: Path, work: Path, workers: int, threshold: float) -> tuple[float, set[int], dict]:
    resource = {
        "apiVersion": "lmforge.io/v1alpha1",
        "kind": "Dataset",
        "metadata": {"name": "bench"},
        "spec": {
            "sources": [{"name": "synthetic", "uri": str(data / "*.jsonl"), "license": "CC0-1.0"}],
            "dedup": {"near": {"threshold": threshold}},
            "tokenizer": {"vocabSize": 1024, "trainBytes": 100000},
            "workers": workers,
        },
    }
    store = work / "store"
    spec = {
        "stage": "dataset",
        "resource": resource,
        "store": str(store),
        "output": "b",
        "runId": "b",
        "worker": {"index": 0, "count": workers},
    }
    (work / "spec.json").write_text(json.dumps(spec))
    # As the embedded runner (`lmforge run`) does: the cores are shared among the worker processes,
    # and each worker curates with that many processes (OMP_NUM_THREADS, see work.curation_processes).
    threads = max(1, len(os.sched_getaffinity(0)) // workers)
    env = {
        **os.environ,
        "LMFORGE_WORK_DIR": str(work / "w"),
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": str(threads),
    }
    start = time.monotonic()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "lmforge.trainer", "dataset", "--spec", str(work / "spec.json")],
            env={**env, "LMFORGE_WORKER_INDEX": str(i)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for i in range(workers)
    ]
    merge = store / "b" / "work" / "merge" / "MANIFEST.json"
    while not merge.exists():
        if procs[0].poll() is not None:
            raise RuntimeError(procs[0].stderr.read().decode()[-2000:])  # type: ignore[union-attr]
        time.sleep(0.05)
    seconds = time.monotonic() - start
    for p in procs:
        p.kill()
        p.wait()
    ids = file_ids(data)
    removed: set[int] = set()
    stats = json.loads((store / "b" / "work" / "merge" / "merge.json").read_text())
    for i in range(workers):
        keys = np.load(store / "b" / "work" / f"worker-{i}" / "keys.npy")
        keep = np.load(store / "b" / "work" / "merge" / f"keep-{i}.npy")
        for key in keys[~keep].tolist():
            removed.add(ids[key >> 32][key & 0xFFFFFFFF])
    return seconds, removed, stats


def _xxh64(data: str | bytes) -> int:
    import xxhash

    return int(xxhash.xxh64_intdigest(data.encode() if isinstance(data, str) else data))


def _datatrove(data: str, work: str, workers: int) -> None:
    import datatrove.utils.hashes.xxhash as dt_xxhash
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter
    from datatrove.utils.word_tokenizers import WordTokenizer

    class Whitespace(WordTokenizer):  # nltk's punkt data cannot be downloaded here
        def word_tokenize(self, text: str) -> list[str]:
            return text.split()

        def sent_tokenize(self, text: str) -> list[str]:
            return text.split(". ")

        def span_tokenize(self, text: str) -> list[tuple[int, int]]:
            raise NotImplementedError

    dt_xxhash.xxhash64 = _xxh64  # xxhash 4 rejects str; datatrove passes str
    config = MinhashConfig()  # 5-grams, 14 buckets × 8 hashes
    tasks = len(list(Path(data).glob("*.jsonl")))
    steps = [
        ([JsonlReader(data), MinhashDedupSignature(f"{work}/sigs", config=config, language=Whitespace())], tasks),
        ([MinhashDedupBuckets(f"{work}/sigs", f"{work}/buckets", config=config)], config.num_buckets),
        ([MinhashDedupCluster(f"{work}/buckets", f"{work}/remove", config=config)], 1),
        (
            [
                JsonlReader(data),
                MinhashDedupFilter(f"{work}/remove", exclusion_writer=JsonlWriter(f"{work}/removed", compression=None)),
                JsonlWriter(f"{work}/kept", compression=None),
            ],
            tasks,
        ),
    ]
    for i, (pipeline, n) in enumerate(steps):
        LocalPipelineExecutor(
            pipeline=pipeline, tasks=n, workers=workers, logging_dir=f"{work}/logs{i}", skip_completed=False
        ).run()


def run_datatrove(data: Path, work: Path, workers: int) -> tuple[float, set[int]]:
    start = time.monotonic()
    _datatrove(str(data), str(work), workers)
    seconds = time.monotonic() - start
    removed = {int(json.loads(line)["id"]) for p in (work / "removed").glob("*.jsonl") for line in open(p)}
    return seconds, removed


CACHE = Path.home() / ".cache" / "lmforge" / "bench"


def corpus_at(data: Path, mb: float) -> dict:
    """The generated corpus in `data`, reusing one cached there with its planted pairs (corpus.json)."""
    meta = data / "corpus.json"
    if meta.is_file():
        corpus = json.loads(meta.read_text())
        corpus["pairs"] = [tuple(p) for p in corpus["pairs"]]
        return corpus
    corpus = generate(data, mb)
    meta.write_text(json.dumps(corpus))
    return corpus


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, default=200)
    ap.add_argument("--threshold", type=float, default=0.6)
    ap.add_argument("--workers", type=int, nargs="*", default=[1, 2], help="our worker counts (none: datatrove only)")
    ap.add_argument("--no-cache", action="store_true", help="generate the corpus afresh in the temporary directory")
    ap.add_argument("--skip-datatrove", action="store_true", help="only ours (for profiling runs; no ratio)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t = time.monotonic()
        data = root / "data" if args.no_cache else CACHE / f"corpus-{args.mb:g}mb"
        corpus = corpus_at(data, args.mb)
        mb = corpus["bytes"] / 1e6  # type: ignore[operator]
        pairs = corpus["pairs"]
        print(
            f"corpus: {mb:.1f} MB, {corpus['documents']} documents, {len(pairs)} planted near-dup pairs "  # type: ignore[arg-type]
            f"(5-gram Jaccard mean {corpus['mean_jaccard']:.2f}, min {corpus['min_jaccard']:.2f}); "
            f"generated in {time.monotonic() - t:.0f} s",
            flush=True,
        )
        rows = []
        for workers in args.workers:
            (root / f"ours{workers}").mkdir()
            seconds, removed, stats = run_ours(data, root / f"ours{workers}", workers, args.threshold)
            score = f1(removed, pairs)  # type: ignore[arg-type]
            rows.append((f"lmforge ({workers} worker{'s' if workers > 1 else ''})", seconds, score))
            print(
                f"{rows[-1][0]}: {mb / seconds:.2f} MB/s ({seconds:.1f} s), near-dup F1 {score['f1']:.3f} "
                f"(P {score['precision']:.3f}, R {score['recall']:.3f}); exact removed {stats['exact_removed']}, "
                f"near removed {stats['near_removed']}, LSH {stats['bands']}×{stats['rows']}",
                flush=True,
            )
        if args.skip_datatrove:
            return
        seconds, removed = run_datatrove(data, root / "datatrove", 2)
        score = f1(removed, pairs)  # type: ignore[arg-type]
        print(
            f"datatrove MinHash (2 workers, 14×8): {mb / seconds:.2f} MB/s ({seconds:.1f} s), near-dup F1 "
            f"{score['f1']:.3f} (P {score['precision']:.3f}, R {score['recall']:.3f})",
            flush=True,
        )
        for name, ours, s in rows:
            print(f"ratio {name} / datatrove MB/s: {seconds / ours:.2f}x  (F1 {s['f1']:.3f} vs {score['f1']:.3f})")


if __name__ == "__main__":
    main()
