"""Toxicity scoring: the fraction of a document's words on a word list, or a pluggable classifier.

A word list is crude but offline, fast and auditable (the card records which list was used); a
`module:function` classifier returning a score in [0, 1] replaces it when one is configured.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from importlib import resources

from lmforge.api.dataset import ToxicityFilter
from lmforge.trainer.errors import InvalidInput

_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")
# ASCII letters lower-cased, every other byte a space: the split gives the text's maximal letter runs.
_LETTER_RUNS = bytes(c | 0x20 if (65 <= c <= 90 or 97 <= c <= 122) else 32 for c in range(256))


def parse_word_list(text: str) -> frozenset[str]:
    """Lower-case words of a list file (`#` comments and blank lines ignored)."""
    return frozenset(w.strip().lower() for w in text.splitlines() if w.strip() and not w.lstrip().startswith("#"))


def builtin_words() -> frozenset[str]:
    return parse_word_list(resources.files(__package__).joinpath("toxic_words.txt").read_text("utf-8"))


class ToxicityScorer:
    """`score(text)` in [0, 1]; `toxic(text)` compares it with the spec's threshold."""

    def __init__(self, spec: ToxicityFilter, read_text: Callable[[str], str]) -> None:
        self.spec = spec
        self.classifier: Callable[[str], float] | None = None
        self.words: frozenset[str] = frozenset()
        if spec.classifier:
            module, _, func = spec.classifier.partition(":")
            try:
                self.classifier = getattr(importlib.import_module(module), func)
            except (ImportError, AttributeError) as exc:
                raise InvalidInput(f"toxicity.classifier: cannot load {spec.classifier!r}: {exc}") from None
        elif spec.word_list:
            self.words = parse_word_list(read_text(spec.word_list))
        else:
            self.words = builtin_words()
        self._bytes_words = frozenset(w.encode() for w in self.words if w.isascii())
        self._runs_precheck = all(w.isascii() and w.isalpha() for w in self.words)

    def score(self, text: str) -> float:
        if self.classifier is not None:
            return float(self.classifier(text))
        if (
            self._runs_precheck
            and text.isascii()
            and self._bytes_words.isdisjoint(text.encode("ascii").translate(_LETTER_RUNS).split())
        ):
            # Every pure-letter `_WORD` match is a maximal letter run, and the list has only pure-letter
            # words, so no run on the list means no hit: the score is 0 without tokenizing.
            return 0.0
        words = _WORD.findall(text.lower())
        if not words:
            return 0.0
        return sum(map(self.words.__contains__, words)) / len(words)

    def toxic(self, text: str) -> bool:
        return self.score(text) > self.spec.threshold

    def settings(self) -> dict[str, object]:
        """For the dataset card."""
        source = self.spec.classifier or self.spec.word_list or "built-in list"
        return {"threshold": self.spec.threshold, "scorer": source, "listSize": len(self.words)}
