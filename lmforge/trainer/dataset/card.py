"""The dataset card: every source with its licence and its counts before and after each step, the
filters' settings, dedup statistics, the tokenizer and the shards, as `card.json` (for tools and
auditors) and `card.md` (for people). Everything needed to reproduce the dataset is in it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lmforge.trainer.dataset.curate import STEPS, SourceCounts

ALL_STEPS = (*STEPS, "exact_dedup", "near_dedup")


def source_table(
    counts: dict[str, SourceCounts],
    tokens: dict[str, int],
    licenses: dict[str, str],
    uris: dict[str, str],
    weights: dict[str, float],
) -> list[dict[str, Any]]:
    """Per-source rows of the card; `read == sum(dropped) + kept` holds for each."""
    rows = []
    for name, c in counts.items():
        read = c.steps.get("read", [0, 0])
        last = c.steps.get(ALL_STEPS[-1], [0, 0])
        rows.append(
            {
                "name": name,
                "uri": uris[name],
                "license": licenses[name],
                "weight": weights[name],
                "read": {"documents": read[0], "bytes": read[1]},
                "steps": [
                    {"step": s, "documents": c.steps.get(s, [0, 0])[0], "bytes": c.steps.get(s, [0, 0])[1]}
                    for s in ALL_STEPS
                ],
                "dropped": {k: {"documents": v[0], "bytes": v[1]} for k, v in sorted(c.dropped.items())},
                "kept": {"documents": last[0], "bytes": last[1], "tokens": tokens.get(name, 0)},
            }
        )
    return rows


def render_markdown(card: dict[str, Any]) -> str:
    """card.md from card.json."""
    out = [
        f"# Dataset card: {card['name']}",
        "",
        card["summary"],
        "",
        "## Sources",
        "",
        "| source | licence | weight | read docs | kept docs | kept bytes | tokens |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in card["sources"]:
        out.append(
            f"| {s['name']} | {s['license']} | {s['weight']} | {s['read']['documents']} | "
            f"{s['kept']['documents']} | {s['kept']['bytes']} | {s['kept']['tokens']} |"
        )
    out += [
        "",
        "## Documents remaining after each step",
        "",
        "| source | " + " | ".join(ALL_STEPS) + " |",
        "|---|" + "---|" * len(ALL_STEPS),
    ]
    for s in card["sources"]:
        out.append(f"| {s['name']} | " + " | ".join(str(st["documents"]) for st in s["steps"]) + " |")
    out += ["", "## Dropped documents by reason", "", "| source | reason | documents | bytes |", "|---|---|---|---|"]
    for s in card["sources"]:
        for reason, v in s["dropped"].items():
            out.append(f"| {s['name']} | {reason} | {v['documents']} | {v['bytes']} |")
    out += ["", "## PII redactions", "", "| type | replacements |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in card["pii"]["redactions"].items()]
    d = card["dedup"]
    out += [
        "",
        "## Deduplication",
        "",
        f"- exact: {d['exact']['removed']} documents removed (hash of the normalised text)",
        f"- near: {d['near']['removed']} documents removed in {d['near']['clusters']} clusters "
        f"(MinHash, {d['near']['numPerm']} permutations, {d['near']['shingleSize']}-word shingles, "
        f"LSH {d['near']['bands']} bands × {d['near']['rows']} rows, threshold {d['near']['threshold']})",
    ]
    t = card["tokenizer"]
    out += [
        "",
        "## Tokenizer",
        "",
        f"- {t['type']}, vocabulary {t['vocabSize']}, special tokens {', '.join(t['specialTokens'])}",
        f"- trained on {t.get('trainBytes', 0)} bytes" if t.get("trained") else f"- loaded from {t.get('fromUri')}",
    ]
    sh = card["shards"]
    out += [
        "",
        "## Shards",
        "",
        f"- {sh['trainSequences']} training and {sh['validationSequences']} validation sequences of "
        f"{sh['seqLength']} tokens ({sh['dtype']}), seed {sh['seed']}",
        f"- {sh['tokens']} tokens packed, {sh['droppedTailTokens']} tail tokens dropped",
        "",
        "## Settings",
        "",
        "```json",
        json.dumps(card["settings"], indent=2, sort_keys=True),
        "```",
        "",
    ]
    return "\n".join(out)


def write(card: dict[str, Any], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "card.json").write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    (out_dir / "card.md").write_text(render_markdown(card))
