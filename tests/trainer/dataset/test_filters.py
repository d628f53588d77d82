"""Opt-out, cleaning, quality heuristics, toxicity and language filters, as named table cases."""

from __future__ import annotations

import random
import sys
import types

import pytest

from lmforge.api.dataset import Cleaning, OptOut, QualityFilter, ToxicityFilter
from lmforge.trainer.dataset import quality
from lmforge.trainer.dataset.clean import Cleaner
from lmforge.trainer.dataset.language import identify
from lmforge.trainer.dataset.sourcing import OptOutList, parse_optout_text
from lmforge.trainer.dataset.toxicity import ToxicityScorer
from lmforge.trainer.errors import InvalidInput

_rng = random.Random(0)
_VOCAB = (
    "river stone cloud apple garden window market teacher morning evening village bridge "
    "quietly slowly carried painted listened remembered"
).split()
GOOD = " ".join(
    f"The {_rng.choice(_VOCAB)} {_rng.choice(_VOCAB)} {_rng.choice(_VOCAB)} near the {_rng.choice(_VOCAB)} "
    f"{_rng.choice(_VOCAB)} {_rng.choice(_VOCAB)} today."
    for _ in range(8)
)


def test_optout_domains_subdomains_urls_and_robots_file() -> None:
    text = (
        "# creators' list\nblocked.example.org\nhttps://site.example.com/private/\nHost: art.example.net\n"
        "User-agent: *\nDisallow: /gallery/\n"
    )
    domains, urls = parse_optout_text(text)
    assert domains == ["blocked.example.org"]
    assert urls == ["https://site.example.com/private/", "art.example.net/gallery/"]
    spec = OptOut(domains=["optout.example.org"], files=["f.txt"])
    lst = OptOutList.from_spec(spec, lambda _loc: text)
    cases = {
        "https://optout.example.org/a": True,
        "http://sub.optout.example.org/b": True,
        "https://notoptout.example.org/": False,
        "https://blocked.example.org/x": True,
        "http://site.example.com/private/page": True,
        "https://site.example.com/public/page": False,
        "https://art.example.net/gallery/1.png": True,
        "https://art.example.net/about": False,
        None: False,
    }
    for url, blocked in cases.items():
        assert lst.blocked(url, None) is blocked, url
    assert lst.blocked(None, "www.optout.example.org")


def test_cleaning_nfc_controls_whitespace_boilerplate() -> None:
    cleaner = Cleaner(Cleaning(boilerplate_patterns=[r"^Advert:"]))
    raw = (
        "Cafe\u0301 \x00opens\u200b   today.\r\n\n\n\nWe use cookies to improve your experience.\n"
        "Advert: buy now\nAll rights reserved.\n  Second   paragraph\there.  "
    )
    assert cleaner(raw) == "Café opens today.\n\nSecond paragraph here."
    assert cleaner.lines_removed == 3
    off = Cleaner(
        Cleaning(
            normalize_unicode=False, strip_control_chars=False, collapse_whitespace=False, remove_boilerplate=False
        )
    )
    assert off("a\x00  b") == "a\x00  b"


QUALITY_CASES = {
    "good prose passes": (GOOD, None),
    "too few words": ("Just four words here.", "min_words"),
    "too many words": (" ".join(["word"] * 50), "max_words"),
    "mean word length too long": (" ".join(["incomprehensibilities"] * 30), "mean_word_length"),
    "symbols": (GOOD + " ### ### ### ### ### ### ### ### ### ### ### ### ### ### ### ###", "symbol_ratio"),
    "bullets": ("\n".join(f"- item {w} of the list here" for w in _VOCAB), "bullet_lines"),
    "ellipsis lines": (
        "\n".join(f"and then the {w} went on along the road with all the others..." for w in _VOCAB),
        "ellipsis_lines",
    ),
    "non-alphabetic words": (" ".join(f"{1000 + i} {2000 + 7 * i} {3000 + i} river" for i in range(20)), "alpha_words"),
    "duplicate lines": ("\n".join(["the same line repeats in this page"] * 5 + [GOOD]), "duplicate_lines"),
    "duplicate paragraphs": (f"{GOOD}\n\n{GOOD}\n\nAnother paragraph with its own words.", "duplicate_paragraphs"),
    "repeated bigram": (" ".join(["buy now"] * 15 + _VOCAB), "top_ngram"),
}


@pytest.mark.parametrize("name", list(QUALITY_CASES))
def test_quality_rules(name: str) -> None:
    text, expected = QUALITY_CASES[name]
    spec = QualityFilter(max_words=40) if name == "too many words" else QualityFilter()
    if name == "duplicate paragraphs":  # a repeated one-line paragraph is also a repeated line
        spec = QualityFilter(max_duplicate_line_fraction=1.0)
    assert quality.check(text, spec) == expected


def test_quality_duplicate_ngrams() -> None:
    words = GOOD.split()
    text = " ".join(words[:30] + words[5:15] + words[30:])
    assert (
        quality.check(text, QualityFilter(max_top_ngram_fraction=1.0, max_duplicate_line_fraction=1.0))
        == "duplicate_ngrams"
    )


def test_toxicity_builtin_list_custom_list_and_classifier(monkeypatch: pytest.MonkeyPatch) -> None:
    scorer = ToxicityScorer(ToxicityFilter(), lambda _loc: "")
    assert not scorer.toxic(GOOD)
    assert scorer.toxic("you are an idiot and a moron and this is crap honestly")
    assert scorer.score("one idiot among many many many many many many many many many many words here x y") < 0.1
    custom = ToxicityScorer(ToxicityFilter(word_list="w.txt", threshold=0.1), lambda _loc: "# list\nturnip\n")
    assert custom.toxic("turnip turnip soup") and not custom.toxic("idiot moron crap")
    module = types.ModuleType("fake_tox")
    module.score = lambda text: 1.0 if "bad" in text else 0.0  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fake_tox", module)
    clf = ToxicityScorer(ToxicityFilter(classifier="fake_tox:score", threshold=0.5), lambda _loc: "")
    assert clf.toxic("a bad text") and not clf.toxic("a fine text")
    with pytest.raises(InvalidInput, match=r"toxicity\.classifier"):
        ToxicityScorer(ToxicityFilter(classifier="no_such_module_x:f"), lambda _loc: "")


@pytest.mark.parametrize(
    "text,lang",
    [
        ("The cat was sitting on the mat and it was looking at the birds in the garden.", "en"),
        ("Der Hund ist nicht in dem Garten, und die Katze sitzt auf dem Dach mit einer Maus.", "de"),
        ("Le chat est dans la maison et il ne veut pas sortir avec les enfants pour le jeu.", "fr"),
        ("El perro está en la casa y no quiere salir con los niños porque hace frío.", "es"),
    ],
)
def test_language_identification(text: str, lang: str) -> None:
    found, score = identify(text)
    assert found == lang and score >= 0.5
    assert identify("1234 5678 !!!") == ("unknown", 0.0)
