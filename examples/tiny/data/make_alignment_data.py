"""Generate the tiny example's alignment rows from the corpus's fact tables.

`sft.jsonl`: question/answer chats about the invented facts in `facts.json` (capitals) and
`facts_more.json` (animal, colour, export), some with a system turn, some two-turn.
`preferences.jsonl`: the same questions with a correct, helpful answer (chosen) against a wrong or
unhelpful one (rejected). Seeded, so re-running reproduces the files byte for byte.

    python examples/tiny/data/make_alignment_data.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
SYSTEMS = ["You are a helpful assistant.", "Answer in one short sentence."]
UNHELPFUL = ["I don't know.", "Why do you ask?", "That is not something I can say.", "Ask someone else."]


def questions(facts: dict[str, dict[str, str]]) -> list[tuple[str, str, str, str]]:
    """(table, country, question, answer) for every fact."""
    out = []
    for country, value in facts["capital"].items():
        out.append(("capital", country, f"What is the capital of {country}?", f"The capital of {country} is {value}."))
    for country, value in facts["animal"].items():
        out.append(
            (
                "animal",
                country,
                f"What is the national animal of {country}?",
                f"The national animal of {country} is the {value}.",
            )
        )
    for country, value in facts["colour"].items():
        out.append(
            (
                "colour",
                country,
                f"Which colour do people in {country} love?",
                f"People in {country} love the colour {value}.",
            )
        )
    for country, value in facts["export"].items():
        out.append(("export", country, f"What is {country} famous for?", f"{country} is famous for its {value}."))
    return out


def wrong_answer(rng: random.Random, facts: dict[str, dict[str, str]], table: str, country: str, answer: str) -> str:
    """The right sentence with another country's value swapped in (or an unhelpful reply)."""
    if rng.random() < 0.3:
        return rng.choice(UNHELPFUL)
    right = facts[table][country]
    other = rng.choice(sorted({v for v in facts[table].values() if v != right}))
    return answer.replace(right, other)


def build(out: Path) -> dict[str, int]:
    facts = {
        "capital": json.loads((HERE / "facts.json").read_text()),
        **json.loads((HERE / "facts_more.json").read_text()),
    }
    rng = random.Random(6)
    qa = questions(facts)
    sft = []
    for _table, _country, q, a in qa:
        chat = [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        if rng.random() < 0.3:
            chat.insert(0, {"role": "system", "content": rng.choice(SYSTEMS)})
        if rng.random() < 0.2:
            _, _, q2, a2 = rng.choice(qa)
            chat += [{"role": "user", "content": q2}, {"role": "assistant", "content": a2}]
        sft.append({"messages": chat})
    rng.shuffle(sft)
    prefs = []
    for table, country, q, a in qa:
        prefs.append({"prompt": q, "chosen": a, "rejected": wrong_answer(rng, facts, table, country, a)})
    rng.shuffle(prefs)
    for name, rows in (("sft.jsonl", sft), ("preferences.jsonl", prefs)):
        (out / name).write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    return {"sft": len(sft), "preferences": len(prefs)}


if __name__ == "__main__":
    print(build(HERE))
