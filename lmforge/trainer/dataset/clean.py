"""Normalisation applied to every document: NFC, control characters, whitespace, boilerplate lines.

Cleaning never drops a document by itself; a document that is empty afterwards is dropped by the
caller as `empty`. Boilerplate is judged per line (cookie banners, copyright lines, navigation
crumbs), because such lines sit inside otherwise good pages.
"""

from __future__ import annotations

import re
import unicodedata

from lmforge.api.dataset import Cleaning

# C0/C1 controls except \t and \n, plus zero-width and BOM characters that survive NFC.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200d\u2060\ufeff]")
# Runs of two or more spaces, or any other horizontal space (a single " " is left alone: fast path).
_SPACES = re.compile(r"(?: {2,}|[\t\u00a0\u2000-\u200a\u202f\u205f\u3000])[ \t\u00a0\u2000-\u200a\u202f\u205f\u3000]*")
_EDGE_SPACES = re.compile(r" *\n *")
_BLANK_LINES = re.compile(r"\n{3,}")

BUILTIN_BOILERPLATE: list[tuple[tuple[str, ...], str]] = [
    # (lower-case substrings the line must contain for the pattern to be tried, pattern)
    (("cookie",), r"^\s*(this (web)?site|we) uses? cookies\b"),
    (("cookie",), r"\baccept (all )?cookies\b"),
    (("©", "(c)", "copyright"), r"^\s*(©|\(c\)|copyright\b).{0,80}$"),
    (("rights reserved",), r"\ball rights reserved\.?\s*$"),
    (("home", "menu"), r"^\s*(home|menu)(\s*[>»|/]\s*\w+){1,}\s*$"),
    (
        ("skip to", "back to top", "share", "follow us"),
        r"^\s*(skip to (main )?content|back to top|share (this|on)\b.*|follow us\b.*)\s*$",
    ),
    (("privacy", "terms of"), r"^\s*(privacy policy|terms of (use|service))(\s*[|·]\s*\w[\w ]*)*\s*$"),
    (
        ("click here", "read more", "subscribe", "sign up", "log in", "login"),
        r"^\s*(click here|read more|subscribe( now)?|sign up|log ?in)\s*[.!]?\s*$",
    ),
]
"""Built-in boilerplate line patterns, each gated by cheap substring checks (most lines match none)."""


class Cleaner:
    """Applies the spec's cleaning steps to one text at a time."""

    def __init__(self, spec: Cleaning) -> None:
        self.spec = spec
        rules = (BUILTIN_BOILERPLATE if spec.remove_boilerplate else []) + [((), p) for p in spec.boilerplate_patterns]
        self._rules = [(hints, re.compile(p, re.IGNORECASE)) for hints, p in rules]
        self._hints = tuple(h for hints, _ in rules for h in hints) if all(h for h, _ in rules) else None
        self.lines_removed = 0

    def _boilerplate(self, line: str) -> bool:
        lower = line.lower()
        return any(
            (not hints or any(h in lower for h in hints)) and pattern.search(line) for hints, pattern in self._rules
        )

    def __call__(self, text: str) -> str:
        if self.spec.normalize_unicode and not unicodedata.is_normalized("NFC", text):
            text = unicodedata.normalize("NFC", text)
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        if self.spec.strip_control_chars:
            text = _CONTROL.sub("", text)
        lower = text.lower()
        if self._rules and (self._hints is None or any(h in lower for h in self._hints)):
            kept = []
            for line in text.split("\n"):
                if line.strip() and self._boilerplate(line):
                    self.lines_removed += 1
                    continue
                kept.append(line)
            text = "\n".join(kept)
        if self.spec.collapse_whitespace:
            # Substring pre-checks (C speed) skip the regex scans that would change nothing; in ASCII
            # text the only horizontal spaces the patterns know are " " and "\t".
            if not text.isascii() or "  " in text or "\t" in text:
                text = _SPACES.sub(" ", text)
            if " \n" in text or "\n " in text:
                text = _EDGE_SPACES.sub("\n", text)
            if "\n\n\n" in text:
                text = _BLANK_LINES.sub("\n\n", text)
        return text.strip()
