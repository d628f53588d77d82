"""The partitioned global dedup scales out: 4× the corpus on 4× the workers keeps every process's peak
RSS within 1.2× of the base case (one worker), with the same F1 on the planted near-duplicates.

Each worker is its own process running the Dataset stage's code (`dedup_parts.run_partition`, then
`components` and `merge` in worker 0) against a local artifact store, as `lmforge run` would; each
reports its own peak RSS (`getrusage(RUSAGE_SELF).ru_maxrss`). The corpus is worker slices as the
curation writes them (`keys.npy`, `exact.npy`, `sigs.bin`, ...) with synthetic MinHash signatures: an
original's near copy at Jaccard J agrees with it in each column with probability J (what MinHash
gives), planted with J in [0.75, 0.95] (positives, to be removed), hard negatives with J in
[0.3, 0.55] (to be kept), and exact copies. Signatures are synthetic so the benchmark measures the
merge at a size where the data, not the interpreter, dominates the RSS; curation throughput is
`dataset_curation.py`'s subject.

The baseline is the single-process rule `dedup.near_duplicates` over all signatures (what the merge
did before), run on the same corpora in a child process: its drops must equal the partitioned ones
exactly, and its peak RSS shows what one process held.

Rounds alternate base / scaled, at least 3; each is printed, then the spread; the goal is checked on
the worst round. Threads are pinned to 1 (OMP/OpenBLAS/MKL) in every child; the machine is shared
with other jobs, which moves times, not peak RSS.

Usage: python benchmarks/dedup_scale.py [--docs 200000] [--rounds 3] [--scale 4]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
NUM_PERM, BANDS, ROWS, THRESHOLD = 112, 18, 6, 0.7  # the defaults (lsh_params at threshold 0.7)
FILES_PER_WORKER = 4
THREADS = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def generate(out: Path, docs: int, files: int, seed: int) -> dict[str, int]:
    """Worker slices for `files` files of `docs` documents in all (written for every worker count
    later: the file → worker split is done at load, so one corpus serves any P). Global order:
    originals first, then copies and negatives, so a planted copy always comes after its original."""
    rng = np.random.default_rng(seed)
    n_near, n_neg, n_exact = int(docs * 0.08), int(docs * 0.04), int(docs * 0.02)
    n_orig = docs - n_near - n_neg - n_exact
    sigs = np.empty((docs, NUM_PERM), dtype=np.uint32)
    sigs[:n_orig] = rng.integers(0, 2**32, size=(n_orig, NUM_PERM), dtype=np.uint32)
    exact = np.empty(docs, dtype=np.uint64)
    exact[:n_orig] = rng.integers(0, 2**63, size=n_orig, dtype=np.uint64)
    label = np.zeros(docs, dtype=np.int8)  # 1: planted near copy (should go), 2: hard negative, 3: exact
    pos = n_orig
    for count, lo, hi, kind in ((n_near, 0.75, 0.95, 1), (n_neg, 0.30, 0.55, 2), (n_exact, 1.0, 1.0, 3)):
        src = rng.integers(0, n_orig, size=count)
        j = rng.uniform(lo, hi, size=(count, 1))
        same = rng.random((count, NUM_PERM)) < j
        fresh = rng.integers(0, 2**32, size=(count, NUM_PERM), dtype=np.uint32)
        sigs[pos : pos + count] = np.where(same, sigs[src], fresh)
        exact[pos : pos + count] = exact[src] if kind == 3 else rng.integers(0, 2**63, size=count, dtype=np.uint64)
        label[pos : pos + count] = kind
        pos += count
    tail = np.arange(n_orig, docs)
    rng.shuffle(tail)  # copies, negatives and exact copies mixed, all after the originals
    order = np.concatenate([rng.permutation(n_orig), tail])
    sigs, exact, label = sigs[order], exact[order], label[order]
    out.mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, docs, files + 1).astype(np.int64)
    for f in range(files):
        a, b = bounds[f], bounds[f + 1]
        d = out / f"file-{f}"
        d.mkdir()
        np.save(d / "exact.npy", exact[a:b])
        np.save(d / "label.npy", label[a:b])
        sigs[a:b].tofile(d / "sigs.bin")
    return {"docs": docs, "near_copies": n_near, "hard_negatives": n_neg, "exact_copies": n_exact}


def write_slices(corpus: Path, files: int, parts: int, store: Path) -> None:
    """The curation's output for `parts` workers: file f goes to worker f mod parts."""
    for w in range(parts):
        d = store / f"work/worker-{w}"
        d.mkdir(parents=True)
        mine = list(range(w, files, parts))
        keys = [(f << 32) | np.arange(len(np.load(corpus / f"file-{f}/exact.npy")), dtype=np.int64) for f in mine]
        np.save(d / "keys.npy", np.concatenate(keys))
        exact = np.concatenate([np.load(corpus / f"file-{f}/exact.npy") for f in mine])
        np.save(d / "exact.npy", exact)
        np.save(d / "sources.npy", np.zeros(len(exact), dtype=np.int32))
        np.save(d / "nbytes.npy", np.full(len(exact), 1000, dtype=np.int64))
        with open(d / "sigs.bin", "wb") as out:
            for f in mine:
                out.write((corpus / f"file-{f}/sigs.bin").read_bytes())
        (d / "stats.json").write_text(json.dumps({"counts": {}, "pii": {}}))


def child_partition(store: Path, parts: int, me: int, result: Path) -> None:
    from lmforge.store import LocalStore
    from lmforge.trainer.dataset.dedup_parts import Exchange, Plan, components, exact_dropped, run_partition
    from lmforge.trainer.dataset.merge import merge

    start = time.monotonic()
    s = LocalStore(store)
    plan = Plan(parts, NUM_PERM, BANDS, ROWS, THRESHOLD, True, True)
    marks: list[tuple[float, str]] = []  # (seconds since start, step) at each step's start

    def progress(message: str) -> None:
        if message.startswith("dedup step"):
            marks.append((time.monotonic() - start, message.split("'")[1]))

    x = Exchange(s, "bench", store.parent / f"scratch-{me}", timeout=3600, progress=progress)
    run_partition(x, plan, me, lambda name: store / f"work/worker-{me}" / name)
    out: dict[str, object] = {}
    if me == 0:
        marks.append((time.monotonic() - start, "components+merge"))
        near = components(x, plan)
        dirs = [store / f"work/worker-{i}" for i in range(parts)]
        r = merge(dirs, ["s"], lambda i: exact_dropped(x, plan, i), near, BANDS, ROWS)
        near_keys = [np.load(d / "keys.npy")[near.dropped[w]] for w, d in enumerate(dirs)]
        out = {
            "exact_removed": r.exact_removed,
            "near_removed": r.near_removed,
            "kept": int(sum(int(k.sum()) for k in r.keep)),
            "near_keys": sorted(np.concatenate(near_keys).tolist()),
        }
    from lmforge.trainer.dataset.dedup_parts import peak_rss_bytes

    end = time.monotonic() - start
    steps = {name: round(t1 - t0, 2) for (t0, name), (t1, _) in zip(marks, [*marks[1:], (end, "")], strict=True)}
    result.write_text(json.dumps({"rss": peak_rss_bytes(), "seconds": end, "steps": steps, **out}))


def child_idle(result: Path) -> None:
    """The interpreter with the modules a worker imports, and no data: the floor under every peak."""
    import scipy.sparse.csgraph  # noqa: F401

    import lmforge.trainer.dataset.dedup_parts
    import lmforge.trainer.dataset.merge

    result.write_text(json.dumps({"rss": lmforge.trainer.dataset.dedup_parts.peak_rss_bytes()}))


def child_reference(corpus: Path, files: int, result: Path) -> None:
    """The single-process rule over every signature (memory-mapped, as the old merge held them)."""
    from lmforge.trainer.dataset.dedup import exact_duplicates, near_duplicates
    from lmforge.trainer.dataset.dedup_parts import peak_rss_bytes

    start = time.monotonic()
    exact = np.concatenate([np.load(corpus / f"file-{f}/exact.npy") for f in range(files)])
    keys = np.concatenate(
        [(f << 32) | np.arange(len(np.load(corpus / f"file-{f}/exact.npy")), dtype=np.int64) for f in range(files)]
    )
    glob = corpus.parent / f"{corpus.name}-sigs.u32"
    with open(glob, "wb") as out:
        for f in range(files):
            out.write((corpus / f"file-{f}/sigs.bin").read_bytes())
    sigs = np.memmap(glob, dtype=np.uint32, mode="r").reshape(len(exact), NUM_PERM)
    drop_exact = exact_duplicates(exact)
    r = near_duplicates(sigs, BANDS, ROWS, THRESHOLD, alive=~drop_exact)
    glob.unlink()
    result.write_text(
        json.dumps(
            {
                "rss": peak_rss_bytes(),
                "seconds": time.monotonic() - start,
                "exact_removed": int(drop_exact.sum()),
                "near_removed": int(r.drop.sum()),
                "near_keys": sorted(keys[r.drop].tolist()),
            }
        )
    )


def f1(corpus: Path, files: int, near_keys: list[int]) -> dict[str, float]:
    labels = {
        (f << 32) | i: int(v)
        for f in range(files)
        for i, v in enumerate(np.load(corpus / f"file-{f}/label.npy").tolist())
        if v
    }
    planted = {k for k, v in labels.items() if v == 1}
    removed = set(near_keys)
    tp = len(removed & planted)
    precision, recall = tp / max(len(removed), 1), tp / max(len(planted), 1)
    return {
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / max(precision + recall, 1e-12),
        "negatives_removed": len(removed & {k for k, v in labels.items() if v == 2}),
    }


def _spawn(args: list[str]) -> subprocess.Popen[bytes]:
    env = {**os.environ, **THREADS, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, __file__, *args], env=env)


def run_partitioned(corpus: Path, files: int, parts: int, tmp: Path) -> list[dict]:
    store = tmp / f"store-p{parts}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write_slices(corpus, files, parts, store)
    procs = [
        _spawn(["--child", "partition", str(store), str(parts), str(me), str(tmp / f"r{me}.json")])
        for me in range(parts)
    ]
    for p in procs:
        if p.wait() != 0:
            raise SystemExit(f"partition worker exited with {p.returncode}")
    results = [json.loads((tmp / f"r{me}.json").read_text()) for me in range(parts)]
    shutil.rmtree(tmp, ignore_errors=True)
    return results


def run_reference(corpus: Path, files: int, tmp: Path) -> dict:
    tmp.mkdir(parents=True, exist_ok=True)
    p = _spawn(["--child", "reference", str(corpus), str(files), str(tmp / "ref.json")])
    if p.wait() != 0:
        raise SystemExit(f"reference exited with {p.returncode}")
    return dict(json.loads((tmp / "ref.json").read_text()))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        role, *rest = sys.argv[2:]
        if role == "partition":
            child_partition(Path(rest[0]), int(rest[1]), int(rest[2]), Path(rest[3]))
        elif role == "idle":
            child_idle(Path(rest[0]))
        else:
            child_reference(Path(rest[0]), int(rest[1]), Path(rest[2]))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=200_000, help="documents in the base corpus")
    ap.add_argument("--scale", type=int, default=4, help="corpus and worker multiple of the scaled case")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    rounds = max(3, args.rounds)
    print(
        f"threads pinned in every child: {THREADS}; cores here: {len(os.sched_getaffinity(0))} "
        f"(shared with other jobs: times are indicative, peak RSS is what is compared)"
    )
    with tempfile.TemporaryDirectory(prefix="dedup-scale-") as tmp_s:
        tmp = Path(tmp_s)
        cases = {"base": (args.docs, 1), "scaled": (args.docs * args.scale, args.scale)}
        corpora = {}
        for name, (docs, parts) in cases.items():
            files = FILES_PER_WORKER * parts
            info = generate(tmp / f"corpus-{name}", docs, files, seed=parts)
            corpora[name] = (tmp / f"corpus-{name}", files)
            print(f"{name}: {info} in {files} files, {parts} worker(s)")
        idle = _spawn(["--child", "idle", str(tmp / "idle.json")])
        idle.wait()
        print(
            f"idle worker process (interpreter + numpy + scipy + lmforge, no data): "
            f"{json.loads((tmp / 'idle.json').read_text())['rss'] / 2**20:.0f} MB"
        )
        refs = {name: run_reference(*corpora[name], tmp / f"ref-{name}") for name in cases}
        for name, ref in refs.items():
            print(
                f"reference (single process, all signatures) {name}: peak RSS {ref['rss'] / 2**20:.0f} MB, "
                f"{ref['seconds']:.1f} s, F1 {f1(*corpora[name], ref['near_keys'])}"
            )
        peaks: dict[str, list[float]] = {name: [] for name in cases}
        ratios = []
        for r in range(rounds):
            for name, (_docs, parts) in cases.items():
                res = run_partitioned(*corpora[name], parts, tmp / f"run-{name}")
                w0 = res[0]
                same = w0["near_keys"] == refs[name]["near_keys"] and w0["exact_removed"] == refs[name]["exact_removed"]
                if not same:
                    raise SystemExit(f"round {r + 1} {name}: partitioned drops differ from the single-process rule")
                peak = max(x["rss"] for x in res) / 2**20
                peaks[name].append(peak)
                each = ", ".join(f"{x['rss'] / 2**20:.0f}" for x in res)
                print(
                    f"round {r + 1} {name:6s} ({parts} worker(s)): per-process peak RSS {each} MB (max {peak:.0f}), "
                    f"wall {max(x['seconds'] for x in res):.1f} s, F1 {f1(*corpora[name], w0['near_keys'])['f1']:.4f}, "
                    f"identical to the single-process rule: {same}"
                )
                print(f"  worker 0 seconds per step (barrier waits included): {w0['steps']}")
            ratios.append(peaks["scaled"][-1] / peaks["base"][-1])
            print(f"round {r + 1}: scaled / base per-process peak RSS = {ratios[-1]:.3f}")
        f_base = f1(*corpora["base"], refs["base"]["near_keys"])["f1"]
        f_scaled = f1(*corpora["scaled"], refs["scaled"]["near_keys"])["f1"]
        for name in cases:
            print(
                f"{name}: peak RSS per round {', '.join(f'{p:.0f}' for p in peaks[name])} MB, "
                f"spread {max(peaks[name]) - min(peaks[name]):.0f} MB"
            )
        print(
            f"ratio per round: {', '.join(f'{x:.3f}' for x in ratios)}; spread {max(ratios) - min(ratios):.3f}; "
            f"worst {max(ratios):.3f} (goal <= 1.2: {'met' if max(ratios) <= 1.2 else 'NOT met'})"
        )
        ref_ratio = refs["scaled"]["rss"] / refs["base"]["rss"]
        print(f"single-process rule, scaled / base peak RSS: {ref_ratio:.2f} (what one merge process grew by)")
        print(
            f"F1 on planted near-duplicates: base {f_base:.4f}, scaled {f_scaled:.4f} "
            f"(partitioned = single-process rule exactly, every round)"
        )


if __name__ == "__main__":
    main()
