"""Generate `facts_mc.jsonl`, the tiny example's multiple-choice task, from the corpus's fact tables.

Every question asks for a fact the corpus states (`facts.json`: country → capital; `facts_more.json`:
national animal and export), with three distractors drawn from the same table, so a model trained on
`corpus.jsonl` can beat the 25% chance level. Rows: {question, choices, answer (index)}.

    python examples/tiny/data/make_eval_data.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Cloze questions in the corpus's own phrasing (the task sets `promptTemplate: "{question}"`), so the
# task measures what pretraining learned rather than whether a 1M-parameter model follows a Q/A format.
QUESTIONS = {
    "capital": "The capital of {country} is",
    "animal": "The national animal of {country} is the",
    "export": "{country} is famous for its",
}
PER_TABLE = {"capital": 40, "animal": 10, "export": 10}


def rows(tables: dict[str, dict[str, str]], seed: int = 0) -> list[dict[str, object]]:
    rng = random.Random(seed)
    out: list[dict[str, object]] = []
    for table, template in QUESTIONS.items():
        facts = tables[table]
        values = sorted(set(facts.values()))
        for country in rng.sample(sorted(facts), PER_TABLE[table]):
            right = facts[country]
            choices = [right, *rng.sample([v for v in values if v != right], 3)]
            rng.shuffle(choices)
            out.append(
                {"question": template.format(country=country), "choices": choices, "answer": choices.index(right)}
            )
    return out


def main() -> None:
    tables = {
        "capital": json.loads((HERE / "facts.json").read_text()),
        **json.loads((HERE / "facts_more.json").read_text()),
    }
    with open(HERE / "facts_mc.jsonl", "w") as f:
        for row in rows(tables):
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
