"""Gopher/C4-style quality heuristics (Rae et al. 2021, "MassiveText" quality filter).

`check` returns the name of the first rule a document fails, or None; the stage counts drops per
rule name (`dropped_quality_<rule>`), so the card shows which heuristic removed what.
"""

from __future__ import annotations

import re
from collections import Counter

from lmforge.api.dataset import QualityFilter

_WORD = re.compile(r"\S+")
_ALPHA = re.compile(r"[^\W\d_]")
_BULLETS = ("•", "-", "*", "·", "‣", "◦", "–")


def _duplicate_fraction(items: list[str]) -> float:
    """Fraction of items that repeat an earlier item."""
    if not items:
        return 0.0
    return (len(items) - len(set(items))) / len(items)


def _top_ngram_fraction(words: list[str], n: int) -> float:
    """Characters covered by the most frequent word n-gram, over all word characters."""
    if len(words) < n:
        return 0.0
    grams = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
    gram, count = grams.most_common(1)[0]
    if count < 2:
        return 0.0
    total = sum(len(w) for w in words)
    return count * sum(len(w) for w in gram) / max(total, 1)


def _duplicate_ngram_fraction(words: list[str], n: int) -> float:
    """Characters of words inside word n-grams that occur more than once, over all word characters."""
    if len(words) < n:
        return 0.0
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
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
    words = _WORD.findall(text)
    n = len(words)
    if n < spec.min_words:
        return "min_words"
    if n > spec.max_words:
        return "max_words"
    mean_len = sum(len(w) for w in words) / n if n else 0.0
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
    if n and sum(1 for w in words if _ALPHA.search(w)) / n < spec.min_alpha_word_ratio:
        return "alpha_words"
    if _duplicate_fraction(lines) > spec.max_duplicate_line_fraction:
        return "duplicate_lines"
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    if _duplicate_fraction(paragraphs) > spec.max_duplicate_paragraph_fraction:
        return "duplicate_paragraphs"
    lowered = [w.lower() for w in words]
    if _top_ngram_fraction(lowered, 2) > spec.max_top_ngram_fraction:
        return "top_ngram"
    if _duplicate_ngram_fraction(lowered, 5) > spec.max_duplicate_ngram_fraction:
        return "duplicate_ngrams"
    return None


RULES = ("min_words", "max_words", "mean_word_length", "symbol_ratio", "bullet_lines", "ellipsis_lines",
         "alpha_words", "duplicate_lines", "duplicate_paragraphs", "top_ngram", "duplicate_ngrams")
"""Every rule name `check` may return."""
