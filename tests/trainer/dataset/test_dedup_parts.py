"""The partitioned dedup (`dedup_parts`) against the single-process reference (`near_duplicates`)."""

from __future__ import annotations

import random
import threading
from pathlib import Path

import numpy as np
import pytest

from lmforge.api.dataset import NearDedup
from lmforge.store import LocalStore
from lmforge.trainer.dataset.dedup import MinHasher, exact_duplicates, exact_hash, lsh_params, near_duplicates
from lmforge.trainer.dataset.dedup_parts import (
    PREFIX,
    Exchange,
    Plan,
    components,
    exact_dropped,
    run_partition,
)

_WORDS = [f"w{i}" for i in range(3000)]
FILES = 12


def _corpus(seed: int = 0) -> list[list[str]]:
    """FILES files of documents: unrelated ones, near-duplicate copies (1-5 words of 200 changed, so
    some fall below the threshold) and exact copies (case and punctuation changed), spread over files."""
    rng = random.Random(seed)
    base = [" ".join(rng.choice(_WORDS) for _ in range(200)) for _ in range(400)]
    texts = list(base)
    for i in range(0, 120, 2):
        words = base[i].split()
        for _ in range(rng.randrange(1, 6)):
            words[rng.randrange(len(words))] = "edited"
        texts.append(" ".join(words))
    texts += [base[i].upper() + "!" for i in range(1, 60, 3)]  # exact duplicates
    texts += [texts[410]] * 2  # exact copies of a near-duplicate copy
    rng.shuffle(texts)
    return [texts[f::FILES] for f in range(FILES)]


def _write_slices(store: LocalStore, files: list[list[str]], parts: int, spec: NearDedup) -> None:
    """Worker slices as the curation writes them: file f goes to worker f mod parts, keys ascending."""
    hasher = MinHasher(spec)
    for w in range(parts):
        keys, exact, sigs = [], [], []
        for f in range(w, FILES, parts):
            for row, text in enumerate(files[f]):
                keys.append((f << 32) | row)
                exact.append(exact_hash(text))
                sigs.append(hasher.signature(text))
        d = store.root / f"work/worker-{w}"
        d.mkdir(parents=True)
        np.save(d / "keys.npy", np.asarray(keys, dtype=np.int64))
        np.save(d / "exact.npy", np.asarray(exact, dtype=np.uint64))
        (d / "sigs.bin").write_bytes(np.stack(sigs).astype(np.uint32).tobytes() if sigs else b"")


def _run(tmp_path: Path, parts: int, spec: NearDedup, exact: bool = True) -> tuple[np.ndarray, np.ndarray, int, int]:
    """(exact drop, near drop) in global key order, candidates and clusters, from `parts` workers
    run as threads (each its own steps and barriers, as the stage's processes do)."""
    store = LocalStore(tmp_path / f"store{parts}")
    files = _corpus()
    _write_slices(store, files, parts, spec)
    bands, rows = lsh_params(spec)
    plan = Plan(parts, spec.num_perm, bands, rows, spec.threshold, exact, True)
    errors: list[BaseException] = []

    def worker(me: int) -> None:
        x = Exchange(store, "fp", tmp_path / f"scratch{parts}-{me}", timeout=120)
        try:
            run_partition(x, plan, me, lambda name: store.root / f"work/worker-{me}" / name)
        except BaseException as e:  # surfaced by the test thread below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(me,)) for me in range(parts)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors and not any(t.is_alive() for t in threads), errors
    x = Exchange(store, "fp", tmp_path / f"scratch{parts}-final", timeout=1)
    near = components(x, plan)
    keys, drop_e, drop_n = [], [], []
    for w in range(parts):
        k = np.load(store.root / f"work/worker-{w}/keys.npy")
        e, n = np.zeros(len(k), bool), np.zeros(len(k), bool)
        e[exact_dropped(x, plan, w)] = True
        n[near.dropped[w]] = True
        keys.append(k)
        drop_e.append(e)
        drop_n.append(n)
    order = np.argsort(np.concatenate(keys))
    return (np.concatenate(drop_e)[order], np.concatenate(drop_n)[order], near.candidate_pairs, near.clusters)


def _reference(spec: NearDedup, exact: bool = True) -> tuple[np.ndarray, np.ndarray, int, int]:
    hasher = MinHasher(spec)
    files = _corpus()
    texts = [t for f in files for t in f]  # global order: file, then row
    sigs = np.stack([hasher.signature(t) for t in texts])
    hashes = np.array([exact_hash(t) for t in texts], dtype=np.uint64)
    drop_e = exact_duplicates(hashes) if exact else np.zeros(len(texts), bool)
    bands, rows = lsh_params(spec)
    r = near_duplicates(sigs, bands, rows, spec.threshold, alive=~drop_e)
    return drop_e, r.drop, r.candidate_pairs, r.clusters


@pytest.mark.parametrize("parts", [1, 3, 4])
def test_partitioned_dedup_drops_exactly_what_one_process_drops(tmp_path: Path, parts: int) -> None:
    spec = NearDedup(threshold=0.8)
    drop_e, drop_n, candidates, clusters = _run(tmp_path, parts, spec)
    ref_e, ref_n, ref_candidates, ref_clusters = _reference(spec)
    assert ref_e.sum() >= 20 and ref_n.sum() >= 30  # the corpus has both kinds, and some copies survive
    assert ref_n.sum() < 60
    assert np.array_equal(drop_e, ref_e)
    assert np.array_equal(drop_n, ref_n)
    assert (candidates, clusters) == (ref_candidates, ref_clusters)
    # Each worker verifies with its own columns only: 112 / parts of every signature.
    shard = np.load(tmp_path / f"store{parts}" / PREFIX / "route-0" / f"cols-{parts - 1}.npy")
    assert shard.shape[1] == len(range(*Plan(parts, 112, 1, 112, 0.8, True, True).columns(parts - 1)))


def test_partitioned_dedup_without_exact_dedup_and_with_explicit_bands(tmp_path: Path) -> None:
    spec = NearDedup(num_perm=64, bands=16, rows=4, threshold=0.7)
    got = _run(tmp_path, 2, spec, exact=False)
    ref = _reference(spec, exact=False)
    assert not got[0].any()
    assert np.array_equal(got[1], ref[1]) and got[2:] == ref[2:]


@pytest.mark.parametrize("num_perm,parts", [(112, 1), (112, 3), (112, 5), (16, 20)])
def test_column_shards_cover_every_column_once(num_perm: int, parts: int) -> None:
    plan = Plan(parts, num_perm, 1, num_perm, 0.7, True, True)
    covered = [c for p in range(parts) for c in range(*plan.columns(p))]
    assert covered == list(range(num_perm))
    widths = [plan.columns(p)[1] - plan.columns(p)[0] for p in range(parts)]
    assert max(widths) - min(widths) <= 1


def test_a_missing_worker_times_out_with_its_name(tmp_path: Path) -> None:
    from lmforge.trainer.errors import StageError

    store = LocalStore(tmp_path / "store")
    _write_slices(store, _corpus(), 2, NearDedup())
    plan = Plan(2, 112, 16, 7, 0.7, True, True)
    x = Exchange(store, "fp", tmp_path / "scratch", timeout=0.5)
    with pytest.raises(StageError, match=r"dedup step 'route' of worker.*route-1"):
        run_partition(x, plan, 0, lambda name: store.root / "work/worker-0" / name)
    assert x.done("route", 0) and not x.done("route", 1)
