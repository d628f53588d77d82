"""Writes the GRPO example's data: `format.jsonl` (SFT rows that teach the answer format with random
digits) and `sums.jsonl` (prompts `a + b =` with a, b in 0..2 and the checkable `answer`).
Run from this folder: `python make_data.py`. Seeded, so the files are reproducible."""

from __future__ import annotations

import json
import random

WORDS = ["cat", "dog", "bird", "fish", "tree", "river", "stone", "cloud", "red", "small", "quiet", "old"]


def prompt(rng: random.Random) -> tuple[str, int]:
    a, b = rng.randrange(3), rng.randrange(3)
    return f"{rng.choice(WORDS)} {rng.choice(WORDS)} : {a} + {b} =", a + b


def main() -> None:
    rng = random.Random(0)
    with open("format.jsonl", "w", encoding="utf-8") as f:
        for _ in range(256):
            text, _ = prompt(rng)
            f.write(json.dumps({"prompt": text, "response": str(rng.randrange(5))}) + "\n")
    with open("sums.jsonl", "w", encoding="utf-8") as f:
        for _ in range(256):
            text, total = prompt(rng)
            f.write(json.dumps({"prompt": text, "answer": str(total)}) + "\n")


if __name__ == "__main__":
    main()
