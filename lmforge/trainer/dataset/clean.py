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
_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200a\u202f\u205f\u3000]+")
_BLANK_LINES = re.compile(r"\n{3,}")

BUILTIN_BOILERPLATE = [
    r"^\s*(this (web)?site|we) uses? cookies\b",
    r"\baccept (all )?cookies\b",
    r"^\s*(©|\(c\)|copyright\b).{0,80}$",
    r"\ball rights reserved\.?\s*$",
    r"^\s*(home|menu)(\s*[>»|/]\s*\w+){1,}\s*$",
    r"^\s*(skip to (main )?content|back to top|share (this|on)\b.*|follow us\b.*)\s*$",
    r"^\s*(privacy policy|terms of (use|service))(\s*[|·]\s*\w[\w ]*)*\s*$",
    r"^\s*(click here|read more|subscribe( now)?|sign up|log ?in)\s*[.!]?\s*$",
]


class Cleaner:
    """Applies the spec's cleaning steps to one text at a time."""

    def __init__(self, spec: Cleaning) -> None:
        self.spec = spec
        patterns = (BUILTIN_BOILERPLATE if spec.remove_boilerplate else []) + spec.boilerplate_patterns
        self._boilerplate = re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE) if patterns else None
        self.lines_removed = 0

    def __call__(self, text: str) -> str:
        if self.spec.normalize_unicode:
            text = unicodedata.normalize("NFC", text)
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        if self.spec.strip_control_chars:
            text = _CONTROL.sub("", text)
        if self._boilerplate is not None:
            kept = []
            for line in text.split("\n"):
                if line.strip() and self._boilerplate.search(line):
                    self.lines_removed += 1
                    continue
                kept.append(line)
            text = "\n".join(kept)
        if self.spec.collapse_whitespace:
            text = "\n".join(_SPACES.sub(" ", line).strip() for line in text.split("\n"))
            text = _BLANK_LINES.sub("\n\n", text)
        return text.strip()
