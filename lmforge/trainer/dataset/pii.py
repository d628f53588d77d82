"""PII redaction: e-mail, phone numbers, IPv4/IPv6, Luhn-checked card numbers and secrets, replaced by
typed placeholders (`<EMAIL>`, `<PHONE>`, `<IP>`, `<CREDIT_CARD>`, `<SECRET>`) and counted per type.

Rules chosen to keep false positives low (prose is full of numbers):

* IPv4: a dotted quad whose four parts are 0–255 without leading zeros, not part of a longer dotted
  number (`1.2.3.4.5`), and not introduced by a version cue (`v`, `version`, `release`, `build`,
  `firmware`, `rev`, `python` …, in the 20 characters before it). So `version 1.2.3.4` and
  `v10.0.0.1` stay, while `connect to 10.0.0.1` is redacted. `ipaddress` has the last word on validity.
* IPv6: a colon-hex run that `ipaddress.IPv6Address` accepts and that has at least two non-empty
  groups (so `::` in prose or code is left alone).
* Phone: an optional `+country` code, then area/exchange/line groups separated by space, `.`, `-` or
  a parenthesised area code, 9–15 digits in all; bare digit runs (IDs, order numbers) and dates are
  not phones.
* Credit cards: 13–19 digits, optionally grouped by spaces or dashes, that pass the Luhn check.
* Secrets: AWS access keys, GitHub/Slack/Google/`sk-` API keys, JWTs, PEM private-key blocks, and the
  value of `api_key=`/`secret:`/`token=`/`password=` assignments (the name is kept).
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter

from lmforge.api.dataset import PiiType

PLACEHOLDERS = {
    PiiType.EMAIL: "<EMAIL>",
    PiiType.PHONE: "<PHONE>",
    PiiType.IP: "<IP>",
    PiiType.CREDIT_CARD: "<CREDIT_CARD>",
    PiiType.SECRET: "<SECRET>",
}

_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
_PHONE = re.compile(
    r"(?<![\w.+/-])(?<!\d[ .-])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{2,4}\)[\s.-]?|\d{2,4}[\s.-])\d{3,4}[\s.-]\d{3,4}"
    r"(?![\w.]\d|[\w-]|\s\d)"
)
_IPV4 = re.compile(r"(?<![\w.])(\d{1,3}(?:\.\d{1,3}){3})(?!\.?\d|[\w-])")
_IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
_VERSION_CUE = re.compile(
    r"(?:\bv|\b(?:version|ver|release|build|firmware|rev|revision|python|kernel|update)\b[\w\s.:#-]{0,20})\s*$",
    re.IGNORECASE,
)
_SECRETS = re.compile(
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----"
    r"|\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"
    r"|\bgh[pousr]_[A-Za-z0-9]{30,}\b"
    r"|\bxox[abprs]-[A-Za-z0-9-]{10,}"
    r"|\bAIza[0-9A-Za-z_-]{35}"
    r"|\bsk-[A-Za-z0-9_-]{20,}"
    r"|\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"
)
# Cheap pre-checks: most documents contain none of these, and then the costly patterns are skipped.
_SECRET_HINT = re.compile(r"AKIA|ASIA|gh[pousr]_|xox[abprs]-|AIza|sk-|eyJ|PRIVATE KEY")
_SECRET_LITERALS = ("AKIA", "ASIA", "xox", "AIza", "sk-", "eyJ", "PRIVATE KEY")
_GITHUB_HINT = re.compile(r"gh[pousr]_")
_DIGITS3 = re.compile(r"\d{3}")
# Starts with a literal, so the regex engine skips ahead to each "." instead of trying every position.
_DOTTED_DIGIT = re.compile(r"\.(?<=\d\.)\d")
_DIGIT_CLASS = bytes(48 if 48 <= c < 58 else 32 for c in range(256))  # ASCII digits -> "0", else " "


def _secret_hint(text: str) -> bool:
    """`_SECRET_HINT.search(text)`, by substring tests (each a fast C scan)."""
    return any(h in text for h in _SECRET_LITERALS) or ("_" in text and _GITHUB_HINT.search(text) is not None)


def _has_digits3(text: str) -> bool:
    """`_DIGITS3.search(text)`; for ASCII text one byte translation and a substring test (5x faster)."""
    if text.isascii():
        return b"000" in text.encode("ascii").translate(_DIGIT_CLASS)
    return _DIGITS3.search(text) is not None


_ASSIGNED_SECRET = re.compile(
    r"(?i)\b((?:api[_-]?key|secret(?:[_-]?key)?|access[_-]?token|auth[_-]?token|token|password|passwd)"
    r"[\"']?\s*[:=]\s*[\"']?)([A-Za-z0-9_\-/+=.]{12,})"
)


def luhn_ok(digits: str) -> bool:
    """The Luhn checksum of a digit string."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


class Redactor:
    """Replaces the configured PII types in a text; `counts` accumulates replacements per type."""

    def __init__(self, types: list[PiiType]) -> None:
        self.types = set(types)
        self.counts: Counter[str] = Counter()

    def _sub(self, kind: PiiType, pattern: re.Pattern[str], text: str, keep: bool = False) -> str:
        placeholder = PLACEHOLDERS[kind]

        def repl(m: re.Match[str]) -> str:
            if keep:  # keep the assignment's name, redact its value
                self.counts[kind.value] += 1
                return m.group(1) + placeholder
            if not self._valid(kind, m, text):
                return m.group(0)
            self.counts[kind.value] += 1
            return placeholder

        return pattern.sub(repl, text)

    @staticmethod
    def _valid(kind: PiiType, m: re.Match[str], text: str) -> bool:
        value = m.group(0)
        if kind == PiiType.CREDIT_CARD:
            digits = re.sub(r"\D", "", value)
            return 13 <= len(digits) <= 19 and luhn_ok(digits)
        if kind == PiiType.PHONE:
            return 9 <= sum(c.isdigit() for c in value) <= 15
        if kind == PiiType.IP and ":" in value:
            if sum(1 for g in value.split(":") if g) < 2:
                return False
            try:
                ipaddress.IPv6Address(value)
            except ValueError:
                return False
            return True
        if kind == PiiType.IP:
            try:
                ipaddress.IPv4Address(value)
            except ValueError:
                return False
            return _VERSION_CUE.search(text, max(0, m.start() - 40), m.start()) is None
        return True

    def __call__(self, text: str) -> str:
        t = self.types
        if PiiType.SECRET in t:
            if _secret_hint(text):
                text = self._sub(PiiType.SECRET, _SECRETS, text)
            if "=" in text or ":" in text:
                text = self._sub(PiiType.SECRET, _ASSIGNED_SECRET, text, keep=True)
        if PiiType.EMAIL in t and "@" in text:
            text = self._sub(PiiType.EMAIL, _EMAIL, text)
        digits = _has_digits3(text)
        if PiiType.CREDIT_CARD in t and digits:
            text = self._sub(PiiType.CREDIT_CARD, _CARD, text)
        if PiiType.IP in t:
            if _DOTTED_DIGIT.search(text):
                text = self._sub(PiiType.IP, _IPV4, text)
            if "::" in text or text.count(":") >= 3:
                text = self._sub(PiiType.IP, _IPV6, text)
        if PiiType.PHONE in t and digits:
            text = self._sub(PiiType.PHONE, _PHONE, text)
        return text
