"""Gopher/C4-style quality heuristics (Rae et al. 2021, "MassiveText" quality filter).

`check` returns the name of the first rule a document fails, or None; the stage counts drops per
rule name (`dropped_quality_<rule>`), so the card shows which heuristic removed what.
"""

from __future__ import annotations

import re
from collections import Counter
from operator import mul

from lmforge.api.dataset import QualityFilter

# A whitespace-delimited word with no letter in it (digits, symbols, punctuation only).
_NO_LETTER_WORD = re.compile(r"(?<!\S)(?:(?![^\W\d_])\S)+(?!\S)")
_BULLETS = ("•", "-", "*", "·", "‣", "◦", "–")
# For ASCII text: keep letters and whitespace (the separators 0x1c-0x1f, whitespace to `str.split` but
# not to `bytes.split`, become spaces); a word keeps a byte iff it has a letter.
_ASCII_SPACE = b" \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f"
_NOT_LETTER_OR_SPACE = bytes(
    c for c in range(256) if not (chr(c).isascii() and chr(c).isalpha()) and c not in _ASCII_SPACE
)
_SEPARATORS_TO_SPACE = bytes(32 if 0x1C <= c <= 0x1F else c for c in range(256))


def _letter_words(text: str) -> int:
    """Whitespace-delimited words with at least one letter (`n - len(_NO_LETTER_WORD.findall(text))`)."""
    if text.isascii():
        return len(text.encode("ascii").translate(_SEPARATORS_TO_SPACE, _NOT_LETTER_OR_SPACE).split())
    return len(text.split()) - len(_NO_LETTER_WORD.findall(text))


def _duplicate_fraction(items: list[str]) -> float:
    """Fraction of items that repeat an earlier item."""
    if not items:
        return 0.0
    return (len(items) - len(set(items))) / len(items)


def _top_ngram_fraction(words: list[str], n: int) -> float:
    """Characters covered by the most frequent word n-gram, over all word characters."""
    if len(words) < n:
        return 0.0
    grams = Counter(zip(*(words[i:] for i in range(n)), strict=False))
    gram, count = grams.most_common(1)[0]
    if count < 2:
        return 0.0
    total = sum(map(len, words))
    return count * sum(map(len, gram)) / max(total, 1)


def _top_bigram_bound(words: list[str]) -> float:
    """An upper bound of `_top_ngram_fraction(words, 2)` from word counts alone (cheaper: no tuples):
    a bigram (a, b) seen k times has k ≤ count(a), count(b), so k·(len a + len b) ≤ 2·max count(w)·len(w)."""
    counts = Counter(words)
    top = max(map(mul, counts.values(), map(len, counts)), default=0)
    return 2 * top / max(sum(map(len, words)), 1)


def _duplicate_ngram_fraction(words: list[str], n: int) -> float:
    """Characters of words inside word n-grams that occur more than once, over all word characters."""
    if len(words) < n:
        return 0.0
    grams = list(zip(*(words[i:] for i in range(n)), strict=False))
    if len(set(grams)) == len(grams):  # the common case: no n-gram repeats (a set is cheaper than a Counter)
        return 0.0
    counts = Counter(grams)
    covered = [False] * len(words)
    for i, gram in enumerate(grams):
        if counts[gram] > 1:
            for j in range(i, i + n):
                covered[j] = True
    total = sum(len(w) for w in words)
    return sum(len(w) for w, c in zip(words, covered, strict=True) if c) / max(total, 1)


def check(text: str, spec: QualityFilter) -> str | None:
    """The first failed rule's name, or None when the document passes."""
    words = text.split()
    n = len(words)
    if n < spec.min_words:
        return "min_words"
    if n > spec.max_words:
        return "max_words"
    mean_len = sum(map(len, words)) / n if n else 0.0
    if not spec.min_mean_word_length <= mean_len <= spec.max_mean_word_length:
        return "mean_word_length"
    symbols = text.count("#") + text.count("...") + text.count("…")
    if n and symbols / n > spec.max_symbol_word_ratio:
        return "symbol_ratio"
    lines = [ln for ln in text.split("\n") if ln.strip()]
    if lines:
        bullets = sum(1 for ln in lines if ln.lstrip().startswith(_BULLETS))
        if bullets / len(lines) > spec.max_bullet_line_ratio:
            return "bullet_lines"
        ellipses = sum(1 for ln in lines if ln.rstrip().endswith(("...", "…")))
        if ellipses / len(lines) > spec.max_ellipsis_line_ratio:
            return "ellipsis_lines"
    if n and _letter_words(text) / n < spec.min_alpha_word_ratio:
        return "alpha_words"
    if _duplicate_fraction(lines) > spec.max_duplicate_line_fraction:
        return "duplicate_lines"
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    if _duplicate_fraction(paragraphs) > spec.max_duplicate_paragraph_fraction:
        return "duplicate_paragraphs"
    lowered = text.lower().split()
    limit = spec.max_top_ngram_fraction
    if _top_bigram_bound(lowered) > limit and _top_ngram_fraction(lowered, 2) > limit:
        return "top_ngram"
    if _duplicate_ngram_fraction(lowered, 5) > spec.max_duplicate_ngram_fraction:
        return "duplicate_ngrams"
    return None


RULES = (
    "min_words",
    "max_words",
    "mean_word_length",
    "symbol_ratio",
    "bullet_lines",
    "ellipsis_lines",
    "alpha_words",
    "duplicate_lines",
    "duplicate_paragraphs",
    "top_ngram",
    "duplicate_ngrams",
)
"""Every rule name `check` may return."""
