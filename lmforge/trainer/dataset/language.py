"""Offline language identification by stop-word profiles.

No model can be downloaded here, so a document's language is the one whose most frequent function
words cover the largest share of its words. The confidence is that language's share of all profile
hits; it is reliable for prose of a few dozen words and says "unknown" (score 0) for word salad,
code or very short texts, which the quality filter handles anyway.
"""

from __future__ import annotations

import re

PROFILES: dict[str, frozenset[str]] = {
    "en": frozenset(
        "the of and to in is was that for it with as on be at by this had not are but from "
        "or have an they which you were her his she he we their there been has would".split()
    ),
    "de": frozenset(
        "der die und in den von zu das mit sich des auf für ist im dem nicht ein eine als "
        "auch es an werden aus er hat dass sie nach wird bei einer um noch wie".split()
    ),
    "fr": frozenset(
        "le la les de des et en un une du est que qui dans pour pas au sur avec il elle "
        "ce se ne plus par sont nous vous ils mais ou aux".split()
    ),
    "es": frozenset(
        "el la los las de del y en que un una es por con para no se su al lo como más "
        "pero sus le ya o este sí porque esta entre cuando muy sin".split()
    ),
    "it": frozenset(
        "il lo la gli le di del della e che un una è per non con si da in al sono ma "
        "come anche più questo ha nel alla dei delle".split()
    ),
    "nl": frozenset(
        "de het een en van in is dat op te zijn met voor niet er aan ook als bij door "
        "maar om dan nog wordt uit hij ze wat".split()
    ),
    "pt": frozenset(
        "o a os as de do da dos das e em um uma que não para com por se na no mais ao "
        "como mas foi ele ela são seu sua".split()
    ),
}

_WORD = re.compile(r"[^\W\d_]+")


def identify(text: str) -> tuple[str, float]:
    """(language code, confidence in [0, 1]); ("unknown", 0.0) when no profile word occurs."""
    words = _WORD.findall(text.lower())
    hits = {lang: sum(1 for w in words if w in profile) for lang, profile in PROFILES.items()}
    total = sum(hits.values())
    if total == 0:
        return "unknown", 0.0
    lang = max(hits, key=lambda k: hits[k])
    return lang, hits[lang] / total
