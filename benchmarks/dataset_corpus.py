"""Synthetic English-like corpus for the Dataset benchmarks, with planted near-duplicates.

Documents are Zipf-distributed words from a generated vocabulary in sentences, so they pass the
quality filters like ordinary prose; a fraction get a near copy whose 5-gram Jaccard similarity
with the original is about 0.7 (words replaced until it drops below 0.72). Every row carries an `id`.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np

_SYL = ["ka", "to", "ri", "men", "sal", "de", "lo", "ver", "an", "tis", "por", "ul", "e", "bra", "qui", "son"]
COMMON = (
    "the of and to in is was that for it with as on be at by this had not are but from or have an they "
    "which you were her his she he we their there been has would"
).split()


def vocabulary(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = set()
    while len(words) < n:
        words.add("".join(rng.choice(_SYL) for _ in range(rng.randint(2, 4))))
    return COMMON + sorted(words)


def shingles(words: list[str], k: int = 5) -> set[tuple[str, ...]]:
    return {tuple(words[i : i + k]) for i in range(len(words) - k + 1)}


def jaccard(a: list[str], b: list[str]) -> float:
    sa, sb = shingles(a), shingles(b)
    return len(sa & sb) / max(len(sa | sb), 1)


def near_copy(words: list[str], rng: random.Random, target: float = 0.72) -> tuple[list[str], float]:
    """Replace random words until the 5-gram Jaccard with the original drops below `target`."""
    copy = list(words)
    while True:
        for _ in range(3):
            copy[rng.randrange(len(copy))] = rng.choice(COMMON)
        j = jaccard(words, copy)
        if j < target:
            return copy, j


def generate(
    out: Path, megabytes: float, files: int = 8, dup_fraction: float = 0.1, seed: int = 0
) -> dict[str, object]:
    """Write `files` JSONL files totalling about `megabytes`; returns the planted pairs and stats."""
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    vocab = np.array(vocabulary(20000, seed))
    ranks = np.arange(1, len(vocab) + 1)
    probs = (1 / ranks**1.1) / (1 / ranks**1.1).sum()
    target = int(megabytes * 1e6)
    docs: list[str] = []
    pairs: list[tuple[int, int]] = []
    sims: list[float] = []
    size = 0
    while size < target:
        n_words = int(nrng.integers(120, 400))
        words = list(vocab[nrng.choice(len(vocab), n_words, p=probs)])
        for i in range(0, n_words, int(nrng.integers(8, 20))):
            words[i] = words[i].capitalize()
        text_words = words
        text = " ".join(text_words).replace(" The ", ". The ") + "."
        if rng.random() < 0.02:
            text += f" Contact me at user{len(docs)}@mail.example.com for details."
        docs.append(text)
        size += len(text) + 30
        if rng.random() < dup_fraction:
            copy, j = near_copy(text.split(), rng)
            docs.append(" ".join(copy))
            pairs.append((len(docs) - 2, len(docs) - 1))
            sims.append(j)
            size += len(docs[-1]) + 30
    order = list(range(len(docs)))
    rng.shuffle(order)  # copies are not next to their originals, and land in other files
    out.mkdir(parents=True, exist_ok=True)
    per = (len(order) + files - 1) // files
    total = 0
    for f in range(files):
        with open(out / f"part-{f:03d}.jsonl", "w") as fh:
            for doc_id in order[f * per : (f + 1) * per]:
                line = json.dumps({"id": str(doc_id), "text": docs[doc_id]}) + "\n"
                total += len(line)
                fh.write(line)
    return {
        "documents": len(docs),
        "bytes": total,
        "pairs": pairs,
        "mean_jaccard": float(np.mean(sims or [0])),
        "min_jaccard": float(np.min(sims or [0])),
        "files": files,
    }


def f1(removed: set[int], pairs: list[tuple[int, int]]) -> dict[str, float]:
    """A planted pair is found when exactly one of its two documents is removed; any other removal
    (an unplanted document, or both of a pair) is a false positive."""
    in_pair = {d for p in pairs for d in p}
    tp = sum(1 for a, b in pairs if (a in removed) != (b in removed))
    fp = len(removed - in_pair) + sum(1 for a, b in pairs if a in removed and b in removed)
    precision = tp / max(tp + fp, 1)
    recall = tp / max(len(pairs), 1)
    return {"precision": precision, "recall": recall, "f1": 2 * precision * recall / max(precision + recall, 1e-9)}
