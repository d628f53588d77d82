"""The global dedup, partitioned across the Dataset's P workers, so that no process holds every
signature (1 B documents × 112 × 4 B is ~450 GB).

Worker p owns the exact hashes h with h mod P = p, the LSH buckets (band, key) with key mod P = p and
the signature columns `Plan.columns(p)`. Each step writes one artifact per worker under `work/dedup/`
in the run's store (committed with the merge's fingerprint, so a restart skips finished steps), and
every worker waits for all P artifacts of a step before it starts the next:

1. `route`   (worker i, its own slice): (exact hash, key, loc) of every document to its exact
             partition; the slice's signatures cut into P column shards.
2. `exact`   (partition p): its hashes sorted; every occurrence after the lowest key is an exact
             duplicate; the dropped rows go back per slice.
3. `bands`   (worker i): the band keys of its surviving documents, routed to the bucket partitions.
4. `buckets` (partition p): its (band, key, document) records sorted; the first (lowest key) member
             of each bucket paired with every other member -- exactly the candidates of the
             single-process `dedup.near_duplicates`.
5. `verify`  (partition p): for the pairs of every bucket partition, how many of p's signature
             columns agree (the estimated Jaccard is a sum over columns, so it splits by column).
6. `edges`   (partition p): its pairs' agreement counts summed over the P column shards; the pairs
             at or above the threshold are the verified edges.
7. `components` (worker 0): the connected components of the verified edges (scipy's union-find,
             folded one partition at a time); all but the lowest key of a component are dropped --
             the single-process rule, so the output is byte-identical whatever P is.

A document is addressed by `loc` = slice << 40 | row (where its row is) and ordered by its global
`key` (file order, then row). Per process, steps 1-6 hold O(n / P) records; step 7 holds the
documents in verified pairs only (a few words per near-duplicate document).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.api.dataset import DatasetSpec
from lmforge.store import ArtifactWriter, Store, is_complete, read_manifest
from lmforge.trainer.dataset.dedup import band_keys, lsh_params
from lmforge.trainer.errors import StageError

PREFIX = "work/dedup"
LOC_SHIFT = 40  # loc = slice << 40 | row: up to 2^40 rows per slice, 2^23 slices
ROW_MASK = np.int64((1 << LOC_SHIFT) - 1)
CHUNK = 1 << 16  # documents (or pairs) handled at a time where a step streams
STEPS = ("route", "exact", "bands", "buckets", "verify", "edges")
"""The steps every worker runs, in order (worker 0 then runs `components`)."""

Progress = Callable[[str], object]


@dataclass(frozen=True)
class Plan:
    """What the partitioned dedup needs of the spec, and how work is split among `parts` workers."""

    parts: int
    num_perm: int
    bands: int
    rows: int
    threshold: float
    exact: bool
    near: bool

    @classmethod
    def from_spec(cls, spec: DatasetSpec, parts: int) -> Plan:
        bands, rows = lsh_params(spec.dedup.near)
        near = spec.dedup.near
        return cls(parts, near.num_perm, bands, rows, near.threshold, spec.dedup.exact, near.enabled)

    def columns(self, part: int) -> tuple[int, int]:
        """[start, stop) of the signature columns partition `part` verifies (as even as can be)."""
        q, r = divmod(self.num_perm, self.parts)
        start = part * q + min(part, r)
        return start, start + q + (1 if part < r else 0)


def wait_for(store: Store, keys: dict[str, str], timeout: float, what: str, progress: Progress, hint: str = "") -> None:
    """Poll `store` until the artifact at every key of `keys` is complete with the fingerprint it maps
    to; a `StageError` (retryable) names the missing ones after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    pending = dict(keys)
    delay = 0.2
    while True:
        for key, fingerprint in sorted(pending.items()):
            manifest = read_manifest(store, key)
            if manifest and manifest.metadata.get("fingerprint") == fingerprint and is_complete(store, key):
                del pending[key]
        if not pending:
            return
        if time.monotonic() >= deadline:
            missing = ", ".join(k.rsplit("/", 1)[-1] for k in sorted(pending))
            raise StageError(f"timed out after {timeout:.0f} s waiting for {what} {missing}{hint}")
        progress(f"waiting for {len(pending)} {what}")
        time.sleep(delay)
        delay = min(delay * 1.5, 5.0)


Files = Iterator[tuple[str, np.ndarray | dict[str, np.ndarray] | Path]]
"""(name, content) of a step's files: an array (.npy), a dict of arrays (.npz), or a file already
written (a step that streams its output writes it under `Exchange.local(step, part)`)."""

RECORD = np.dtype([("band", "<i4"), ("bkey", "<u8"), ("key", "<i8"), ("loc", "<i8")])
"""One (band, bucket key, document) of step 3's output: 28 bytes, raw files of these records."""


class Exchange:
    """The steps' intermediate files, through the run's store: one artifact per (step, worker),
    files fetched one at a time (a consumer reads only its partition of each producer)."""

    def __init__(
        self, store: Store, fingerprint: str, scratch: Path, timeout: float, progress: Progress | None = None
    ) -> None:
        self.store = store
        self.fingerprint = fingerprint
        self.scratch = scratch
        self.timeout = timeout
        self.progress: Progress = progress or (lambda _message: None)

    @staticmethod
    def key(step: str, part: int) -> str:
        return f"{PREFIX}/{step}-{part}"

    def done(self, step: str, part: int) -> bool:
        manifest = read_manifest(self.store, self.key(step, part))
        return bool(
            manifest
            and manifest.metadata.get("fingerprint") == self.fingerprint
            and is_complete(self.store, self.key(step, part))
        )

    def local(self, step: str, part: int) -> Path:
        """The local folder a step's files are written in before they are uploaded (made empty)."""
        local = self.scratch / f"{step}-{part}"
        shutil.rmtree(local, ignore_errors=True)
        local.mkdir(parents=True)
        return local

    def publish(self, step: str, part: int, files: Files, meta: dict[str, Any] | None = None) -> None:
        """Write, upload and free each file as it comes, then commit."""
        local = self.scratch / f"{step}-{part}"
        local.mkdir(parents=True, exist_ok=True)
        writer = ArtifactWriter(self.store, self.key(step, part), clear_existing=True)
        for name, data in files:
            path = local / name
            if isinstance(data, Path):
                path = data
            elif isinstance(data, dict):
                np.savez(path, **data)  # type: ignore[arg-type]
            else:
                np.save(path, data)
            writer.add_file(name, path)
            path.unlink()
            del data
        writer.commit(f"dataset-dedup-{step}", {"fingerprint": self.fingerprint, **(meta or {})})
        shutil.rmtree(local, ignore_errors=True)

    def wait(self, step: str, parts: int) -> None:
        keys = {self.key(step, p): self.fingerprint for p in range(parts)}
        wait_for(self.store, keys, self.timeout, f"dedup step '{step}' of worker(s)", self.progress)

    def fetch(self, key: str) -> Path:
        """A local copy of the file at `key` (the caller deletes it)."""
        self.scratch.mkdir(parents=True, exist_ok=True)
        path = self.scratch / ("in-" + key.replace("/", "_"))
        self.store.get_file(key, path)
        return path

    def load(self, step: str, part: int, name: str) -> np.ndarray:
        path = self.fetch(f"{self.key(step, part)}/{name}")
        try:
            return np.load(path)
        finally:
            path.unlink()

    def load_dict(self, step: str, part: int, name: str) -> dict[str, np.ndarray]:
        path = self.fetch(f"{self.key(step, part)}/{name}")
        try:
            with np.load(path) as z:
                return {k: z[k] for k in z.files}
        finally:
            path.unlink()

    def meta(self, step: str, part: int) -> dict[str, Any]:
        manifest = read_manifest(self.store, self.key(step, part))
        assert manifest is not None
        return dict(manifest.metadata)

    def concat(self, step: str, name: str, parts: int) -> dict[str, np.ndarray]:
        """The dicts `name` of every worker's `step` artifact, field by field concatenated."""
        loaded = [self.load_dict(step, p, name) for p in range(parts)]
        return {k: np.concatenate([d[k] for d in loaded]) for k in loaded[0]}


def _locs(part: int, n: int) -> np.ndarray:
    return (np.int64(part) << np.int64(LOC_SHIFT)) | np.arange(n, dtype=np.int64)


# ---- the steps; `slice_file(name)` gives a local copy of a file of this worker's slice -------------------


def route(x: Exchange, plan: Plan, me: int, slice_file: Callable[[str], Path]) -> None:
    keys = np.load(slice_file("keys.npy"))
    exact = np.load(slice_file("exact.npy"))
    n = len(keys)
    loc = _locs(me, n)
    local = x.local("route", me)
    shards: list[Path] = []
    if plan.near:
        # The slice's signatures cut into P column shards in one streaming pass: (n, width) uint32 each.
        shards = [local / f"cols-{q}.npy" for q in range(plan.parts)]
        outs = [open(path, "wb") for path in shards]
        try:
            for q, out in enumerate(outs):
                start, stop = plan.columns(q)
                np.lib.format.write_array_header_1_0(
                    out, {"descr": "<u4", "fortran_order": False, "shape": (n, stop - start)}
                )
            for sig in _signature_chunks(slice_file, n, plan.num_perm):
                for q, out in enumerate(outs):
                    start, stop = plan.columns(q)
                    out.write(np.ascontiguousarray(sig[:, start:stop]).tobytes())
        finally:
            for out in outs:
                out.close()

    def files() -> Files:
        part = (exact % np.uint64(plan.parts)).astype(np.int64)
        for q in range(plan.parts):
            mine = part == q
            yield f"exact-{q}.npz", {"exact": exact[mine], "key": keys[mine], "loc": loc[mine]}
        for path in shards:
            yield path.name, path

    x.publish("route", me, files(), {"documents": n})


def _signature_chunks(slice_file: Callable[[str], Path], n: int, num_perm: int) -> Iterator[np.ndarray]:
    """The slice's signatures, CHUNK rows at a time, read (not memory-mapped: a mapping's pages would
    stay in the resident set): (<= CHUNK, num_perm) uint32."""
    if n == 0:
        return
    with open(slice_file("sigs.bin"), "rb") as f:
        for start in range(0, n, CHUNK):
            rows = min(CHUNK, n - start)
            yield np.fromfile(f, dtype=np.uint32, count=rows * num_perm).reshape(rows, num_perm)


def _read_into(path: Path, out: np.ndarray, header: bool) -> None:
    """Read the file at `path` (a .npy when `header`, else raw) straight into `out`: no second copy."""
    with open(path, "rb") as f:
        if header:
            version = np.lib.format.read_magic(f)
            read_header = (
                np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            )
            shape, _fortran, dtype = read_header(f)
            if tuple(shape) != out.shape or dtype != out.dtype:
                raise ValueError(f"{path}: {shape} {dtype}, expected {out.shape} {out.dtype}")
        buf = out.reshape(-1).view(np.uint8)  # a view: `out` is a contiguous row range
        if f.readinto(buf) != buf.nbytes:  # type: ignore[arg-type]
            raise ValueError(f"{path}: shorter than {buf.nbytes} bytes")


def exact_step(x: Exchange, plan: Plan, me: int) -> None:
    recs = x.concat("route", f"exact-{me}.npz", plan.parts)
    dropped = np.zeros(0, dtype=np.int64)
    if plan.exact and len(recs["exact"]):
        order = np.lexsort((recs["key"], recs["exact"]))  # by hash, then key: the first is kept
        h = recs["exact"][order]
        dup = np.zeros(len(h), dtype=bool)
        dup[1:] = h[1:] == h[:-1]
        dropped = recs["loc"][order][dup]
    src = dropped >> np.int64(LOC_SHIFT)

    def files() -> Files:
        for i in range(plan.parts):
            yield f"drop-{i}.npy", np.sort(dropped[src == i] & ROW_MASK)

    x.publish("exact", me, files(), {"dropped": len(dropped)})


def exact_dropped(x: Exchange, plan: Plan, worker: int) -> np.ndarray:
    """Rows of slice `worker` that are exact duplicates (sorted)."""
    return np.sort(np.concatenate([x.load("exact", q, f"drop-{worker}.npy") for q in range(plan.parts)]))


def bands_step(x: Exchange, plan: Plan, me: int, slice_file: Callable[[str], Path]) -> None:
    keys = np.load(slice_file("keys.npy"))
    n = len(keys)
    alive = np.ones(n, dtype=bool)
    alive[exact_dropped(x, plan, me)] = False
    local = x.local("bands", me)
    paths = [local / f"part-{q}.rec" for q in range(plan.parts)]
    outs = [open(path, "wb") for path in paths]
    try:
        for c, chunk in enumerate(_signature_chunks(slice_file, n, plan.num_perm)):
            rows = np.flatnonzero(alive[c * CHUNK : c * CHUNK + len(chunk)])
            sig = chunk[rows]
            rows += c * CHUNK
            loc = (np.int64(me) << np.int64(LOC_SHIFT)) | rows.astype(np.int64)
            for band in range(plan.bands):
                bkey = band_keys(sig[:, band * plan.rows : (band + 1) * plan.rows])
                part = (bkey % np.uint64(plan.parts)).astype(np.int64)
                for q, out in enumerate(outs):
                    mine = np.flatnonzero(part == q)
                    rec = np.empty(len(mine), dtype=RECORD)
                    rec["band"], rec["bkey"], rec["key"], rec["loc"] = band, bkey[mine], keys[rows[mine]], loc[mine]
                    out.write(rec.tobytes())
    finally:
        for out in outs:
            out.close()
    x.publish("bands", me, ((path.name, path) for path in paths))


def buckets_step(x: Exchange, plan: Plan, me: int) -> None:
    paths = [x.fetch(f"{x.key('bands', i)}/part-{me}.rec") for i in range(plan.parts)]
    sizes = [path.stat().st_size // RECORD.itemsize for path in paths]
    rec = np.empty(sum(sizes), dtype=RECORD)  # every record of this partition, every band
    at = 0
    for path, size in zip(paths, sizes, strict=True):
        _read_into(path, rec[at : at + size], header=False)
        path.unlink()
        at += size
    candidates = 0
    found: list[tuple[np.ndarray, np.ndarray]] = []  # (representative, member) record indices per band
    for band in range(plan.bands):  # bands are independent: one band's temporaries at a time
        idx = np.flatnonzero(rec["band"] == band)
        bkey = rec["bkey"][idx]
        order = np.lexsort((rec["key"][idx], bkey))  # per bucket, lowest key first
        bkey = bkey[order]
        starts = np.ones(len(order), dtype=bool)
        starts[1:] = bkey[1:] != bkey[:-1]
        members = np.flatnonzero(~starts)
        first = np.flatnonzero(starts)[np.cumsum(starts)[members] - 1]  # each member's bucket start
        candidates += len(members)
        found.append((idx[order[first]], idx[order[members]]))
        del idx, bkey, order, starts
    a = np.concatenate([f[0] for f in found]) if found else np.zeros(0, dtype=np.int64)
    b = np.concatenate([f[1] for f in found]) if found else np.zeros(0, dtype=np.int64)
    a_loc, b_loc = rec["loc"][a], rec["loc"][b]
    # The same pair found in several bands is verified once (its estimate does not depend on the band).
    uniq = np.lexsort((b_loc, a_loc))
    keep = np.ones(len(uniq), dtype=bool)
    keep[1:] = (a_loc[uniq][1:] != a_loc[uniq][:-1]) | (b_loc[uniq][1:] != b_loc[uniq][:-1])
    sel = uniq[keep]
    # One file per field: `verify` (every partition) fetches the locations only.
    pairs = {"a_key": rec["key"][a[sel]], "a_loc": a_loc[sel], "b_key": rec["key"][b[sel]], "b_loc": b_loc[sel]}
    del rec
    x.publish("buckets", me, ((f"{k}.npy", v) for k, v in pairs.items()), {"candidates": candidates, "pairs": len(sel)})


def verify_step(x: Exchange, plan: Plan, me: int) -> None:
    start, stop = plan.columns(me)
    sizes = [int(x.meta("route", i)["documents"]) for i in range(plan.parts)]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    cols = np.empty((int(offsets[-1]), stop - start), dtype=np.uint32)  # this partition's columns, all docs
    for i in range(plan.parts):
        if sizes[i]:
            path = x.fetch(f"{x.key('route', i)}/cols-{me}.npy")
            _read_into(path, cols[offsets[i] : offsets[i + 1]], header=True)
            path.unlink()

    count_dtype = np.uint8 if stop - start <= 255 else np.uint16  # 1 B per pair from 5 workers on

    def rows(loc: np.ndarray) -> np.ndarray:
        return offsets[loc >> np.int64(LOC_SHIFT)] + (loc & ROW_MASK)

    def files() -> Files:
        for q in range(plan.parts):
            a_loc, b_loc = x.load("buckets", q, "a_loc.npy"), x.load("buckets", q, "b_loc.npy")
            eq = np.zeros(len(a_loc), dtype=count_dtype)  # agreeing columns per pair
            for s in range(0, len(eq), CHUNK):
                ia, ib = rows(a_loc[s : s + CHUNK]), rows(b_loc[s : s + CHUNK])
                eq[s : s + CHUNK] = (cols[ia] == cols[ib]).sum(axis=1, dtype=count_dtype)
            yield f"eq-{q}.npy", eq

    x.publish("verify", me, files())


def edges_step(x: Exchange, plan: Plan, me: int) -> None:
    pairs = {k: x.load("buckets", me, f"{k}.npy") for k in ("a_key", "a_loc", "b_key", "b_loc")}
    agree = np.zeros(len(pairs["a_loc"]), dtype=np.int64)
    for c in range(plan.parts):
        agree += x.load("verify", c, f"eq-{me}.npy")
    # The same float comparison as near_duplicates' mean over the columns.
    ok = agree.astype(np.float64) / plan.num_perm >= plan.threshold
    edges = {k: v[ok] for k, v in pairs.items()}
    meta = {"candidates": int(x.meta("buckets", me)["candidates"]), "verified": int(ok.sum())}
    x.publish("edges", me, iter([("edges.npz", edges)]), meta)


@dataclass
class Components:
    """The near-duplicate outcome: dropped rows per slice and the card's statistics."""

    dropped: list[np.ndarray]  # per slice: sorted rows
    clusters: int
    candidate_pairs: int
    verified_pairs: int


def _stars(key: np.ndarray, loc: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Connected components of the graph with edges `key[a[i]]`-`key[b[i]]` over the nodes `key`
    (unique, ascending; `loc` alongside): (key, loc, root key) per node, the root being the lowest key
    of its component."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    m = len(key)
    graph = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(m, m))
    _count, label = connected_components(graph, directed=False)
    _, first = np.unique(label, return_index=True)  # per component, its first node = its lowest key
    return key, loc, key[first[label]]


def components(x: Exchange, plan: Plan) -> Components:
    """Step 7: the verified pairs' connected components; all but each component's lowest key go.

    The bucket partitions' edges are folded, a batch at a time, into a forest of stars (each node
    linked to its component's lowest key), so memory holds the nodes seen so far plus a batch of
    edges, not every verified pair (a pair found in several bands may be verified in several
    partitions)."""
    empty = [np.zeros(0, dtype=np.int64) for _ in range(plan.parts)]
    if not plan.near:
        return Components(empty, 0, 0, 0)
    node_key = np.zeros(0, dtype=np.int64)  # (m,) ascending: every document in a verified pair so far
    node_loc = np.zeros(0, dtype=np.int64)
    root_key = np.zeros(0, dtype=np.int64)  # (m,) its component's lowest key
    candidates = verified = 0
    buffered: list[dict[str, np.ndarray]] = []  # verified edges not yet folded in
    for q in range(plan.parts):
        meta = x.meta("edges", q)
        candidates += int(meta["candidates"])
        verified += int(meta["verified"])
        if meta["verified"]:
            buffered.append(x.load_dict("edges", q, "edges.npz"))
        pending = sum(len(e["a_key"]) for e in buffered)
        # Fold when the buffer outgrows the stars (or at the end): memory stays within ~2x the nodes,
        # and the nodes are re-sorted a few times, not once per partition.
        if buffered and (pending >= len(node_key) or q == plan.parts - 1):
            # Edges: the buffered verified pairs, plus each known node to its root (the stars so far).
            root_loc = node_loc[np.searchsorted(node_key, root_key)]
            ends_key = np.concatenate(
                [*(e["a_key"] for e in buffered), node_key, *(e["b_key"] for e in buffered), root_key]
            )
            ends_loc = np.concatenate(
                [*(e["a_loc"] for e in buffered), node_loc, *(e["b_loc"] for e in buffered), root_loc]
            )
            buffered = []
            half = len(ends_key) // 2
            node_key, first, inverse = np.unique(ends_key, return_index=True, return_inverse=True)
            node_loc = ends_loc[first]
            node_key, node_loc, root_key = _stars(node_key, node_loc, inverse[:half], inverse[half:])
            del ends_key, ends_loc
    drop = root_key != node_key
    dropped_locs = node_loc[drop]
    src = dropped_locs >> np.int64(LOC_SHIFT)
    dropped = [np.sort(dropped_locs[src == i] & ROW_MASK) for i in range(plan.parts)]
    return Components(dropped, len(np.unique(root_key)), candidates, verified)


def run_partition(x: Exchange, plan: Plan, me: int, slice_file: Callable[[str], Path]) -> None:
    """Steps 1-6 for worker `me`, each skipped when already committed, with a barrier after each (the
    last one for worker 0 only, which then runs `components` and deletes the intermediates)."""
    steps: dict[str, Callable[[], None]] = {
        "route": lambda: route(x, plan, me, slice_file),
        "exact": lambda: exact_step(x, plan, me),
        "bands": lambda: bands_step(x, plan, me, slice_file),
        "buckets": lambda: buckets_step(x, plan, me),
        "verify": lambda: verify_step(x, plan, me),
        "edges": lambda: edges_step(x, plan, me),
    }
    for step in STEPS:
        if step in ("bands", "buckets", "verify", "edges") and not plan.near:
            break
        if not x.done(step, me):
            x.progress(f"dedup step '{step}' (partition {me} of {plan.parts})")
            steps[step]()
        last = step == "edges" or (step == "exact" and not plan.near)
        if me == 0 or not last:  # only worker 0 goes on (to `components`) after the last step
            x.wait(step, plan.parts)


def peak_rss_bytes() -> int:
    """This process's peak resident set so far: `VmHWM` of /proc/self/status on Linux (the high-water
    mark of this program's own memory; `getrusage`'s ru_maxrss also counts the parent's RSS at fork,
    which exec does not reset), else ru_maxrss."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # KiB on Linux
