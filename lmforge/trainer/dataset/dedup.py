"""Deduplication: exact (hash of the normalised text) and near (MinHash signatures + LSH banding).

Workers compute, per document, a 64-bit exact hash and a MinHash signature (datasketch's affine32
scheme over hashed word n-gram shingles); the merge sees all of them at once, so both kinds of
duplicates are found across workers. Documents are identified by their global position (file order,
then row), and the representative kept from each cluster is the one that comes first; the result is
therefore the same whatever the number of workers.

The merge works band by band on a (possibly memory-mapped) signature matrix: per band one uint64 key
per document, a sort, and a verification of each candidate against the first member of its bucket
(estimated Jaccard ≥ the threshold), so memory stays at a few words per document.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lmforge.api.dataset import NearDedup

_PUNCT = re.compile(r"[^\w\s]+")
_MIX = np.uint64(0x9E3779B97F4A7C15)  # 64-bit golden-ratio multiplier (Fibonacci hashing)
_BLOCK = 2048  # shingles per (shingles × num_perm) product block: 2048 × 112 × 4 B ≈ 0.9 MB


def normalized_words(text: str) -> list[str]:
    """The words of `normalize(text)` (lower-case, punctuation removed), without joining them."""
    return _PUNCT.sub(" ", text.lower()).split()


# ASCII: letters lower-cased, \w and whitespace kept (0x1c-0x1f, whitespace to `str.split` only, become
# spaces), everything else (the punctuation `_PUNCT` removes) a space.
_NORMALIZE_ASCII = bytes(
    32
    if 0x1C <= c <= 0x1F
    else c | 0x20
    if 65 <= c <= 90
    else c
    if (c < 128 and (chr(c).isalnum() or c == 95 or chr(c).isspace()))
    else 32
    for c in range(256)
)


def normalized_tokens(text: str) -> list[str] | list[bytes]:
    """`normalized_words(text)`, as UTF-8 bytes for ASCII text (one byte translation and split, no
    regular expression: the common case) and as str otherwise; `hash_tokens` and the MinHasher accept
    either and give the same results for both."""
    if text.isascii():
        return text.encode("ascii").translate(_NORMALIZE_ASCII).split()
    return normalized_words(text)


def hash_tokens(words: list[str] | list[bytes]) -> int:
    """`hash_normalized(" ".join(words))` for `normalized_tokens` output."""
    if words and isinstance(words[0], bytes):
        return int.from_bytes(hashlib.blake2b(b" ".join(words), digest_size=8).digest(), "little")
    return hash_normalized(" ".join(words))  # type: ignore[arg-type]


def normalize(text: str) -> str:
    """Lower-case, punctuation removed, whitespace collapsed: what 'the same text' means."""
    return " ".join(normalized_words(text))


def hash_normalized(norm: str) -> int:
    """`exact_hash` of a text whose `normalize` is `norm`."""
    return int.from_bytes(hashlib.blake2b(norm.encode(), digest_size=8).digest(), "little")


def exact_hash(text: str) -> int:
    """64-bit hash of the normalised text (collisions ~n²/2⁶⁵: negligible)."""
    return hash_normalized(normalize(text))


def lsh_params(spec: NearDedup) -> tuple[int, int]:
    """(bands, rows): the spec's, or datasketch's optimum for its threshold with false negatives
    weighted 9:1 over false positives -- every LSH candidate is verified against the signature
    estimate afterwards, so a false positive costs a comparison while a false negative is a missed
    duplicate (at threshold 0.7 and 112 permutations: 18 bands × 6 rows, recall 0.9 at J = 0.7)."""
    if spec.bands is not None and spec.rows is not None:
        return spec.bands, spec.rows
    from datasketch.lsh import _optimal_param

    bands, rows = _optimal_param(spec.threshold, spec.num_perm, 0.1, 0.9)
    return int(bands), int(rows)


def _identity(x: Any) -> Any:
    return x


class MinHasher:
    """MinHash signatures of word n-gram shingles; the same seed gives the same signatures in every
    worker process (no use of Python's per-process `hash`)."""

    def __init__(self, spec: NearDedup, seed: int = 1) -> None:
        from datasketch import MinHash

        self._MinHash = MinHash
        self.spec = spec
        self.k = spec.shingle_size
        self.permutations = MinHash(spec.num_perm, seed=seed, scheme="affine32").permutations
        self._word_hash: dict[str | bytes, int] = {}
        # Per-position multipliers that turn k word hashes into one n-gram hash: (k,) uint64.
        self._weights = (np.arange(1, self.k + 1, dtype=np.uint64) * _MIX) | np.uint64(1)

    def _word_hashes(self, words: Sequence[str | bytes]) -> np.ndarray:
        """crc32 of each word's UTF-8 (str or bytes words), through a cache (most words repeat):
        (len(words),) uint64."""
        cache = self._word_hash
        if len(cache) > 2_000_000:  # bound memory on corpora with huge vocabularies
            cache.clear()
        try:
            return np.fromiter(map(cache.__getitem__, words), dtype=np.uint64, count=len(words))
        except KeyError:
            for w in set(words).difference(cache):
                cache[w] = zlib.crc32(w if isinstance(w, bytes) else w.encode())
            return np.fromiter(map(cache.__getitem__, words), dtype=np.uint64, count=len(words))

    def _mix(self, words: np.ndarray, k: int) -> np.ndarray:
        """32-bit hashes of the k-word windows of `words` (m,) uint64: (m - k + 1,) uint32."""
        windows = np.lib.stride_tricks.sliding_window_view(words, k)  # (m - k + 1, k)
        mixed = (windows * self._weights[:k]).sum(axis=1, dtype=np.uint64)  # wraps mod 2^64
        return (mixed >> np.uint64(32)).astype(np.uint32)

    def shingles(self, text: str) -> np.ndarray:
        """32-bit hashes of the document's word k-grams (a shorter document is one shingle): (m,)."""
        words = self._word_hashes(normalized_words(text))
        if len(words) == 0:
            return np.zeros(1, dtype=np.uint32)
        return self._mix(words, min(self.k, len(words)))

    def signatures(self, texts: list[str]) -> np.ndarray:
        """(len(texts), num_perm) uint32: exactly `signature` of each text, computed for the batch at
        once."""
        return self.signatures_of_words([normalized_words(t) for t in texts])

    def signatures_of_words(self, docs: Sequence[Sequence[str | bytes]]) -> np.ndarray:
        """`signatures` from each text's `normalized_words`: the shingles of the whole batch are hashed
        as one array (windows crossing a document boundary are masked out), then datasketch's affine32
        update (MurmurHash3 finalizer, then h·a + b mod 2³²) is applied to all of them in one array
        operation and reduced per document."""
        from datasketch.minhash import _fmix

        if not docs:
            return np.zeros((0, self.spec.num_perm), dtype=np.uint32)
        k = self.k
        lengths = np.fromiter((len(d) for d in docs), dtype=np.int64, count=len(docs))  # words per doc
        words = self._word_hashes([w for d in docs for w in d])  # (W,) uint64, all docs back to back
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])  # first word of each doc
        counts = np.maximum(lengths - k + 1, 1)  # shingles per doc (a short or empty doc has one)
        if len(words) >= k:
            mixed = self._mix(words, k)  # (W - k + 1,) every window, boundary-crossing ones included
            # Window start positions of every document's own windows, concatenated: (Σ counts,)
            pos = np.repeat(starts, counts) + np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
            shingles = mixed[np.minimum(pos, len(mixed) - 1)]
        else:
            shingles = np.zeros(int(counts.sum()), dtype=np.uint32)
        offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])  # first shingle of each doc
        for i in np.flatnonzero(lengths < k).tolist():  # rare: fewer words than k (or none)
            n = int(lengths[i])
            w = words[starts[i] : starts[i] + n]
            shingles[offsets[i]] = self._mix(w, n)[0] if n else 0
        hv = _fmix(shingles, 32)  # (M,) uint32
        return self._reduce(hv, offsets, counts)

    def _reduce(self, hv: np.ndarray, offsets: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """Per document, the minimum over its shingles of h·a + b mod 2³² for every permutation:
        (B, P) uint32. The (shingles × P) products are formed a group of whole documents at a time
        (about `_BLOCK` shingles, ~1 MB: cache-resident), which is about twice as fast as one
        chunk-sized array."""
        a, b = self.permutations  # (P,) uint32 each
        n = len(offsets)
        out = np.empty((n, len(a)), dtype=np.uint32)
        ends = offsets + counts  # (B,) one past each document's last shingle
        buf = np.empty((max(_BLOCK, int(counts.max())), len(a)), dtype=np.uint32)
        i = 0
        while i < n:
            start = int(offsets[i])
            j = max(int(np.searchsorted(ends, start + _BLOCK, side="right")), i + 1)  # docs i..j-1
            end = int(ends[j - 1])
            phv = buf[: end - start]  # (m, P)
            np.multiply(hv[start:end, None], a, out=phv)  # wraps mod 2^32
            np.add(phv, b, out=phv)
            out[i:j] = np.minimum.reduceat(phv, offsets[i:j] - start, axis=0)
            i = j
        return out

    def signature(self, text: str) -> np.ndarray:
        """(num_perm,) uint32 MinHash signature (datasketch's MinHash, one document)."""
        m = self._MinHash(self.spec.num_perm, hashfunc=_identity, permutations=self.permutations, scheme="affine32")
        m.update_batch(self.shingles(text).tolist())
        return np.asarray(m.hashvalues, dtype=np.uint32)


@dataclass
class NearDupResult:
    """Which documents near-dedup drops, and cluster statistics for the card."""

    drop: np.ndarray  # (n,) bool
    clusters: int  # clusters with more than one member
    candidate_pairs: int
    verified_pairs: int


def _find(parent: np.ndarray, i: int) -> int:
    root = i
    while parent[root] != root:
        root = int(parent[root])
    while parent[i] != root:  # path compression
        parent[i], i = root, int(parent[i])
    return root


def band_keys(cols: np.ndarray) -> np.ndarray:
    """One uint64 bucket key per row of a band's signature columns `cols` (n, rows) uint32: a
    polynomial hash of the rows, wrapping mod 2⁶⁴ (the single-process and the partitioned merge both
    bucket with it, so they find the same candidates): (n,) uint64."""
    cols = np.asarray(cols, dtype=np.uint64)
    keys = np.zeros(cols.shape[0], dtype=np.uint64)
    for j in range(cols.shape[1]):
        keys = keys * _MIX + cols[:, j] + np.uint64(j + 1)
    return keys


def near_duplicates(
    sigs: np.ndarray, bands: int, rows: int, threshold: float, alive: np.ndarray | None = None
) -> NearDupResult:
    """Near-duplicate clusters among the rows of `sigs` (n, num_perm) whose `alive` flag is set; every
    member but the lowest-indexed of each cluster is dropped. This holds every signature in one place;
    the Dataset stage runs the same rule partitioned over its workers (`dedup_parts`), and this
    in-memory form is the reference it is tested against."""
    n = sigs.shape[0]
    alive_idx = np.arange(n) if alive is None else np.flatnonzero(alive)
    parent = np.arange(n, dtype=np.int64)
    candidates = verified = 0
    for band in range(bands):
        keys = band_keys(sigs[alive_idx, band * rows : (band + 1) * rows])
        order = np.argsort(keys, kind="stable")  # stable: lowest index first within a bucket
        sorted_keys = keys[order]
        starts = np.ones(len(order), dtype=bool)
        starts[1:] = sorted_keys[1:] != sorted_keys[:-1]
        group_first = np.maximum.accumulate(np.where(starts, np.arange(len(order)), 0))
        members = np.flatnonzero(~starts)
        if len(members) == 0:
            continue
        a = alive_idx[order[group_first[members]]]  # bucket representative
        b = alive_idx[order[members]]
        candidates += len(b)
        sim = (np.asarray(sigs[a]) == np.asarray(sigs[b])).mean(axis=1)
        ok = sim >= threshold
        verified += int(ok.sum())
        for x, y in zip(a[ok].tolist(), b[ok].tolist(), strict=True):
            rx, ry = _find(parent, x), _find(parent, y)
            if rx != ry:
                parent[max(rx, ry)] = min(rx, ry)
    roots = np.array([_find(parent, i) for i in range(n)], dtype=np.int64) if n else parent
    drop = roots != np.arange(n)
    clusters = len(np.unique(roots[drop])) if drop.any() else 0
    return NearDupResult(drop, clusters, candidates, verified)


def exact_duplicates(hashes: np.ndarray) -> np.ndarray:
    """(n,) bool: documents whose exact hash occurred at a lower index."""
    _, first = np.unique(hashes, return_index=True)
    drop = np.ones(len(hashes), dtype=bool)
    drop[first] = False
    return drop
