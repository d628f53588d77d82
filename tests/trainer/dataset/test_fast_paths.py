"""The filters' fast paths (byte translations and substring pre-checks for ASCII text, blocked MinHash
products) give exactly what the plain regular expressions / datasketch give, on adversarial text."""

from __future__ import annotations

import io
import random
import re

import numpy as np

from lmforge.api.dataset import Cleaning, NearDedup, ToxicityFilter
from lmforge.trainer.dataset import dedup, pii, quality
from lmforge.trainer.dataset.clean import _BLANK_LINES, _EDGE_SPACES, _SPACES, Cleaner
from lmforge.trainer.dataset.toxicity import _WORD, ToxicityScorer
from lmforge.trainer.shards import Packer, dtype_for

# Pieces chosen to hit every branch: separators that are whitespace to str but not to bytes, digits
# next to dots, apostrophes, secret prefixes, list words in other case, and some non-ASCII.
PIECES = [
    " ",
    "  ",
    "\t",
    "\n",
    "\n\n\n",
    " \n",
    "\x1c",
    "\x1f",
    "\x0b",
    "\x0c",
    "\r",
    "'",
    "''",
    ".",
    "...",
    "#",
    "-",
    "_",
    "7",
    "123",
    "4.5",
    "1.2.3.4",
    "ab",
    "Ab",
    "XYZ",
    "don't",
    "damn",
    "DAMN",
    "dam'n",
    "AKIA",
    "ghp_",
    "xoxb-",
    "sk-",
    "eyJ",
    "é",
    "\u00a0",
    "\u3000",
    "٣٤٥",
    "a1",
    "!?",
    "@",
    "x",
]


def _texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(PIECES) for _ in range(rng.randint(0, 40))) for _ in range(n)]


def test_quality_letter_words_matches_the_regex() -> None:
    for text in _texts(3000):
        assert quality._letter_words(text) == len(text.split()) - len(quality._NO_LETTER_WORD.findall(text)), text


def test_pii_prechecks_match_the_regexes() -> None:
    for text in _texts(3000, seed=1):
        if pii._SECRET_HINT.search(text):
            assert pii._secret_hint(text), text  # a superset pre-check: never misses a hint
        assert pii._has_digits3(text) == (re.search(r"\d{3}", text) is not None), text
        assert (pii._DOTTED_DIGIT.search(text) is None) == (re.search(r"\d\.\d", text) is None), text


def test_toxicity_fast_zero_matches_the_tokenizer() -> None:
    scorer = ToxicityScorer(ToxicityFilter(threshold=0.5), lambda _: "")
    scorer.words = frozenset(scorer.words | {"damn", "dam"})
    scorer._bytes_words = frozenset(w.encode() for w in scorer.words)
    hits = 0
    for text in _texts(3000, seed=2):
        words = _WORD.findall(text.lower())
        expected = sum(w in scorer.words for w in words) / len(words) if words else 0.0
        assert scorer.score(text) == expected, text
        hits += expected > 0
    assert hits > 100  # both paths were taken


def test_whitespace_prechecks_match_unconditional_substitution() -> None:
    cleaner = Cleaner(Cleaning(normalize_unicode=False, strip_control_chars=False, remove_boilerplate=False))
    for text in _texts(3000, seed=3):
        plain = text.replace("\r\n", "\n").replace("\r", "\n")
        expected = _BLANK_LINES.sub("\n\n", _EDGE_SPACES.sub("\n", _SPACES.sub(" ", plain))).strip()
        assert cleaner(text) == expected, repr(text)


def test_blocked_signatures_match_datasketch_across_block_boundaries() -> None:
    rng = random.Random(4)
    vocab = [f"w{i}" for i in range(500)]
    # Documents longer than a block, many short ones, and ones shorter than a shingle.
    lengths = [dedup._BLOCK * 2 + 7, 3, 0, 1, *[rng.randint(2, 900) for _ in range(40)], dedup._BLOCK - 1]
    texts = [" ".join(rng.choice(vocab) for _ in range(n)) for n in lengths]
    a, b = dedup.MinHasher(NearDedup()), dedup.MinHasher(NearDedup())
    assert np.array_equal(a.signatures(texts), np.stack([b.signature(t) for t in texts]))


def test_packer_matches_naive_concatenation() -> None:
    rng = random.Random(5)
    docs = [[rng.randrange(60000) for _ in range(rng.choice([0, 1, 5, 300]))] for _ in range(200)]
    buf = io.BytesIO()
    packer = Packer(buf, 16, dtype_for(60000), eos_id=7)
    for start in range(0, len(docs), 64):
        packer.add(docs[start : start + 64])
    packer.add([])
    stream = [t for d in docs for t in (*d, 7)]
    full = len(stream) // 16 * 16
    assert np.frombuffer(buf.getvalue(), dtype="<u2").tolist() == stream[:full]
    assert (packer.rows, packer.tokens, packer.tail) == (full // 16, len(stream), len(stream) - full)


def test_top_bigram_bound_is_an_upper_bound() -> None:
    rng = random.Random(6)
    for _ in range(2000):
        words = [
            rng.choice(["a", "bb", "ccc", "the", "of", "x" * rng.randint(1, 9)]) for _ in range(rng.randint(0, 30))
        ]
        assert quality._top_ngram_fraction(words, 2) <= quality._top_bigram_bound(words)


def test_normalized_tokens_match_the_regex_normalisation() -> None:
    hasher = dedup.MinHasher(NearDedup())
    texts = _texts(2000, seed=7)
    for text in texts:
        tokens = dedup.normalized_tokens(text)
        assert [t if isinstance(t, str) else t.decode() for t in tokens] == dedup.normalized_words(text), repr(text)
        assert dedup.hash_tokens(tokens) == dedup.exact_hash(text)
    # bytes and str tokens in one batch give datasketch's signatures (the word-hash cache holds both)
    assert np.array_equal(
        hasher.signatures_of_words([dedup.normalized_tokens(t) for t in texts[:300]]),
        np.stack([dedup.MinHasher(NearDedup()).signature(t) for t in texts[:300]]),
    )
