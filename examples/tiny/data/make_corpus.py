"""Generate the tiny example corpus (`corpus.jsonl`) and its fact table (`facts.json`).

Deterministic (seed 7): rerunning rewrites byte-identical files. The corpus is short English-like
stories built around invented facts ("The capital of Zorbia is Quell."), so a tiny model trained on
it can be asked multiple-choice questions about them; `facts.json` maps each country to its capital
(and lists the other fact tables) so another script can build `facts_mc.jsonl` from the same data.

Planted for the curation steps to find: exact and near duplicates, documents with e-mail addresses
and phone numbers, documents with toxic words, documents from the opted-out domain
`optout.example.org`, and junk too short or too symbol-heavy for the quality filter.

Usage: python examples/tiny/data/make_corpus.py [OUT_DIR]
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

SEED = 7
N_COUNTRIES = 40
N_STORIES = 2600

_ONSETS = ["z", "qu", "br", "t", "v", "m", "k", "l", "dr", "s", "f", "gr", "p", "n", "h", "pl"]
_VOWELS = ["a", "o", "e", "i", "u", "ae", "ou"]
_CODAS = ["r", "n", "l", "x", "th", "m", "s", "nd", "ll", "k"]
_NAMES = [
    "Ada",
    "Bram",
    "Cleo",
    "Dov",
    "Esme",
    "Finn",
    "Gus",
    "Hana",
    "Ivo",
    "Juno",
    "Kai",
    "Lena",
    "Milo",
    "Nora",
    "Otto",
    "Pia",
    "Rafe",
    "Suki",
    "Tove",
    "Uma",
]
_ANIMALS = ["fox", "owl", "otter", "heron", "lynx", "badger", "crane", "hare", "seal", "wren"]
_COLOURS = ["red", "blue", "green", "silver", "golden", "purple", "white", "black"]
_GOODS = ["salt", "glass", "wool", "copper", "tea", "paper", "honey", "rope"]
_WEATHER = ["rainy", "windy", "sunny", "foggy", "snowy", "mild"]
_TOXIC = ["idiot", "moron", "crap", "shit", "bastard", "jackass"]


def _word(rng: random.Random, syllables: int) -> str:
    return "".join(
        rng.choice(_ONSETS) + rng.choice(_VOWELS) + (rng.choice(_CODAS) if i == syllables - 1 else "")
        for i in range(syllables)
    ).capitalize()


def fact_tables(rng: random.Random) -> dict[str, dict[str, str]]:
    """country → capital, animal, colour, export; names unique."""
    countries: list[str] = []
    capitals: list[str] = []
    while len(countries) < N_COUNTRIES:
        c = _word(rng, 2) + rng.choice(["ia", "land", "ova", "stan", "ria"])
        if c not in countries:
            countries.append(c)
    while len(capitals) < N_COUNTRIES:
        cap = _word(rng, rng.choice([1, 2]))
        if cap not in capitals and cap not in countries:
            capitals.append(cap)
    return {
        "capital": dict(zip(countries, capitals, strict=True)),
        "animal": {c: rng.choice(_ANIMALS) for c in countries},
        "colour": {c: rng.choice(_COLOURS) for c in countries},
        "export": {c: rng.choice(_GOODS) for c in countries},
    }


def story(rng: random.Random, facts: dict[str, dict[str, str]]) -> str:
    """One short story of 6–12 varied sentences, stating two or three facts."""
    countries = rng.sample(sorted(facts["capital"]), 3)
    who, friend = rng.sample(_NAMES, 2)
    c0, c1, c2 = countries
    cap = facts["capital"]
    sentences = [
        rng.choice(
            [
                f"The capital of {c0} is {cap[c0]}.",
                f"{cap[c0]} is the capital of {c0}.",
                f"In {c0}, the capital city is {cap[c0]}.",
            ]
        ),
        rng.choice(
            [
                f"{who} lived in {cap[c0]} with a {facts['animal'][c0]} named {friend}.",
                f"{who} once took a train to {cap[c0]} on a {rng.choice(_WEATHER)} morning.",
                f"Every spring {who} visited {cap[c0]} to buy {facts['export'][c0]}.",
            ]
        ),
        rng.choice(
            [
                f"People in {c0} love the colour {facts['colour'][c0]}.",
                f"The flag of {c0} is mostly {facts['colour'][c0]}.",
                f"Most houses in {cap[c0]} are painted {facts['colour'][c0]}.",
            ]
        ),
        rng.choice(
            [
                f"Later {who} travelled to {c1}, whose capital is {cap[c1]}.",
                f"{friend} said that {cap[c1]} is the capital of {c1}.",
                f"From there the road leads to {cap[c1]}, the capital of {c1}.",
            ]
        ),
        rng.choice(
            [
                f"{c1} is famous for its {facts['export'][c1]}.",
                f"Traders from {c1} sell {facts['export'][c1]} at every market.",
                f"The national animal of {c1} is the {facts['animal'][c1]}.",
            ]
        ),
        rng.choice(
            [
                f"The weather was {rng.choice(_WEATHER)}, so {who} stayed inside and read a book.",
                f"{who} and {friend} shared bread, cheese and warm soup.",
                f"At night {who} counted the stars above the {rng.choice(_COLOURS)} hills.",
            ]
        ),
    ]
    if rng.random() < 0.6:
        sentences.append(
            rng.choice(
                [
                    f"Everyone knows that the capital of {c2} is {cap[c2]}.",
                    f"A letter arrived from {cap[c2]}, the capital of {c2}.",
                    f"{friend} dreamed of visiting {cap[c2]} in {c2} one day.",
                ]
            )
        )
    sentences.append(
        rng.choice(
            [
                f"In the end {who} went home happy.",
                f"{who} smiled and fell asleep.",
                f"It was a good day for {who} and {friend}.",
            ]
        )
    )
    text = " ".join(sentences)
    return text if rng.random() < 0.7 else text.replace(". ", ".\n\n", 2)


def _near_copy(rng: random.Random, text: str) -> str:
    """A light edit: one word replaced (5-gram Jaccard with the original ≈ 0.85)."""
    words = text.split(" ")
    for _ in range(1):
        words[rng.randrange(len(words))] = rng.choice(["really", "quite", "very", "then"])
    return " ".join(words)


def build(out: Path) -> dict[str, int]:
    rng = random.Random(SEED)
    facts = fact_tables(rng)
    docs: list[dict[str, str]] = []
    for i in range(N_STORIES):
        docs.append({"text": story(rng, facts), "url": f"https://stories.example.com/{i}"})
    planted = {"exact_dup": 0, "near_dup": 0, "pii": 0, "toxic": 0, "optout": 0, "junk": 0}
    for i in rng.sample(range(N_STORIES), 60):  # exact duplicates, modulo case/punctuation/spacing
        docs.append({"text": docs[i]["text"].upper().replace(".", " ."), "url": f"https://mirror.example.net/{i}"})
        planted["exact_dup"] += 1
    for i in rng.sample(range(N_STORIES), 80):
        docs.append({"text": _near_copy(rng, docs[i]["text"]), "url": f"https://copies.example.net/{i}"})
        planted["near_dup"] += 1
    for i in range(40):
        who = rng.choice(_NAMES)
        contact = rng.choice(
            [f"{who.lower()}.{i}@mail.example.com", f"+44 20 7946 {1000 + i}", f"(555) 301-{2000 + i}"]
        )
        docs.append(
            {
                "text": story(rng, facts) + f" You can reach {who} at {contact} any day of the week.",
                "url": f"https://stories.example.com/contact/{i}",
            }
        )
        planted["pii"] += 1
    for i in range(30):
        words = story(rng, facts).split(" ")
        for _ in range(len(words) // 8):
            words.insert(rng.randrange(len(words)), rng.choice(_TOXIC))
        docs.append({"text": " ".join(words), "url": f"https://forum.example.com/{i}"})
        planted["toxic"] += 1
    for i in range(40):
        docs.append({"text": story(rng, facts), "url": f"https://optout.example.org/post/{i}"})
        planted["optout"] += 1
    for i in range(30):
        docs.append(
            {
                "text": rng.choice(["Click here.", "### ### ### $$$ ### ###", "ok ok", "Home > News"]),
                "url": f"https://junk.example.com/{i}",
            }
        )
        planted["junk"] += 1
    rng.shuffle(docs)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "corpus.jsonl", "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps(d, ensure_ascii=False) + "\n")
    (out / "facts.json").write_text(json.dumps(facts["capital"], indent=1, sort_keys=True) + "\n")
    (out / "facts_more.json").write_text(
        json.dumps({k: v for k, v in facts.items() if k != "capital"}, indent=1, sort_keys=True) + "\n"
    )
    return planted


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent
    print(json.dumps(build(target)))
