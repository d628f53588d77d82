"""Decontamination: drop training documents that share a word n-gram with evaluation data.

The protected n-grams come from the EvalSuites named in the spec (their task rows at
`tasks[].dataUri`) and from extra files. Every string value of a JSONL row (question, choices,
answer, prompt…) is protected separately; values shorter than `ngram` words cannot be matched by an
n-gram of that length and are counted as `too_short` in the card (GPT-3's rule, which keeps short
fact questions from wiping out every document that states the fact in passing).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from typing import Any

from lmforge.api.dataset import Decontamination
from lmforge.trainer.dataset.dedup import normalize
from lmforge.trainer.errors import InvalidInput


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)


def _ngram_hashes(words: list[str], n: int) -> set[int]:
    return {
        int.from_bytes(hashlib.blake2b(" ".join(words[i : i + n]).encode(), digest_size=8).digest(), "little")
        for i in range(len(words) - n + 1)
    }


class Decontaminator:
    """Holds the protected n-gram hashes; `contaminated(text)` tells whether a document overlaps."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.ngrams: set[int] = set()
        self.texts = 0
        self.too_short = 0
        self.files: list[str] = []

    def add_text(self, text: str) -> None:
        words = normalize(text).split()
        self.texts += 1
        if len(words) < self.n:
            self.too_short += 1
            return
        self.ngrams |= _ngram_hashes(words, self.n)

    def add_file(self, location: str, content: str) -> None:
        """A JSONL (every string value of every row) or plain-text (every line) evaluation file."""
        self.files.append(location)
        for lineno, line in enumerate(content.splitlines(), 1):
            if not line.strip():
                continue
            if line.lstrip().startswith(("{", "[")):
                try:
                    row = json.loads(line)
                except ValueError:
                    raise InvalidInput(f"decontamination file {location}: line {lineno} is not JSON") from None
                for s in _strings(row):
                    self.add_text(s)
            else:
                self.add_text(line)

    def contaminated(self, text: str) -> bool:
        if not self.ngrams:
            return False
        words = normalize(text).split()
        n = self.n
        for i in range(len(words) - n + 1):
            h = int.from_bytes(hashlib.blake2b(" ".join(words[i : i + n]).encode(), digest_size=8).digest(), "little")
            if h in self.ngrams:
                return True
        return False

    def settings(self) -> dict[str, object]:
        """For the dataset card."""
        return {
            "ngram": self.n,
            "files": self.files,
            "texts": self.texts,
            "tooShort": self.too_short,
            "protectedNgrams": len(self.ngrams),
        }


def eval_data_uris(spec: Decontamination, inputs: dict[str, dict[str, Any] | None]) -> list[str]:
    """The evaluation files to protect: each referenced EvalSuite's `tasks[].dataUri`, then `uris`.

    `inputs` maps `EvalSuite/<name>` to that suite's spec (as the runner resolved it).
    """
    out: list[str] = []
    for ref in spec.eval_suite_refs:
        key = f"EvalSuite/{ref.name}"
        if key not in inputs:
            raise InvalidInput(f"dedup.decontaminate.evalSuiteRefs: {key} was not resolved")
        suite = inputs[key] or {}
        for task in suite.get("tasks", []):
            uri = task.get("dataUri") or task.get("data_uri")
            if uri:
                out.append(uri)
    return out + list(spec.uris)


def build(
    spec: Decontamination, inputs: dict[str, dict[str, Any] | None], read_text: Callable[[str], str]
) -> Decontaminator:
    """A decontaminator loaded with every protected evaluation file."""
    d = Decontaminator(spec.ngram)
    for uri in eval_data_uris(spec, inputs):
        d.add_file(uri, read_text(uri))
    return d
