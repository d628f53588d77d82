"""Training rows for alignment: read JSONL/Parquet from a path, glob or S3 prefix, check every row
against the method's format, and normalise it to chats.

Formats (one JSON object per row):

* SFT: `{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}` with at least one
  assistant turn, or `{"prompt": str, "response": str}` (optionally `"system": str`).
* reward / DPO / IPO: `{"prompt": str | messages, "chosen": str, "rejected": str}`.
* KTO: `{"prompt": str | messages, "completion": str, "label": true | false}` (unpaired feedback).
* PPO, GRPO, RLOO: `{"prompt": str | messages}`; for GRPO/RLOO every other column is kept and handed to
  the rewards (e.g. `answer` for an answer reward).

A bad row is an `InvalidInput` naming the file, the 1-based row number and the field; with
`skipBadRows` it is counted (and the first few reasons kept) and left out instead.
"""

from __future__ import annotations

import glob
import json
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmforge.api.alignment import AlignmentMethod, DataFormat
from lmforge.store import open_store, split_uri
from lmforge.trainer.artifacts import cache_dir
from lmforge.trainer.chat import ROLES, Message
from lmforge.trainer.errors import InvalidInput


class BadRow(ValueError):
    """One row does not fit the method's format; the message names the field."""


@dataclass
class Example:
    """A normalised row: the chat so far (`prompt`), plus what the method trains on."""

    prompt: list[Message]
    """For SFT the whole chat; otherwise the turns before the answer."""
    chosen: str | None = None
    rejected: str | None = None
    completion: str | None = None
    """KTO: the rated answer."""
    label: bool | None = None
    """KTO: whether the answer was desirable."""
    columns: dict[str, Any] = field(default_factory=dict)
    """GRPO/RLOO: the row's other columns, which rewards read."""


@dataclass
class Rows:
    """The rows that passed, and an account of those that did not."""

    examples: list[Example]
    bad: int = 0
    reasons: list[str] = field(default_factory=list)


def _files(uri: str) -> list[tuple[str, Path]]:
    """(name for messages, local path) of every data file under `uri`, in sorted order."""
    if uri.startswith("s3://"):
        root, leaf = split_uri(uri)
        store = open_store(root)
        keys = [k for k in store.list(leaf) if k.endswith((".jsonl", ".json", ".parquet"))]
        if store.exists(leaf):
            keys = [leaf]
        out = []
        for key in keys:
            local = cache_dir() / "align-data" / key.replace("/", "_")
            store.get_file(key, local)
            out.append((store.url(key), local))
        return out
    path = uri.removeprefix("file://")
    if os.path.isdir(path):
        names = sorted(str(p) for p in Path(path).rglob("*") if p.suffix in (".jsonl", ".json", ".parquet"))
    else:
        names = sorted(glob.glob(path))
    return [(n, Path(n)) for n in names]


def _read(name: str, path: Path, fmt: DataFormat) -> Iterator[tuple[str, Any]]:
    """(where, raw row) for each row of one file; `where` is `file:row` with 1-based rows."""
    parquet = fmt is DataFormat.PARQUET or (fmt is DataFormat.AUTO and path.suffix == ".parquet")
    if parquet:
        import pyarrow.parquet as pq

        for i, row in enumerate(pq.read_table(path).to_pylist(), 1):
            yield f"{name}:{i}", row
        return
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield f"{name}:{i}", json.loads(line)
            except json.JSONDecodeError as exc:
                yield f"{name}:{i}", BadRow(f"not JSON: {exc.msg}")


def raw_rows(uri: str, fmt: DataFormat = DataFormat.AUTO) -> Iterator[tuple[str, Any]]:
    """(where, raw row) of every row under `uri`, unparsed (a `BadRow` for a line that is not JSON)."""
    files = _files(uri)
    if not files:
        raise InvalidInput(f"no data files at {uri}")
    for name, path in files:
        yield from _read(name, path, fmt)


def _text(row: dict[str, Any], key: str) -> str:
    value = row.get(key)
    if value is None:
        raise BadRow(f"missing field {key!r}")
    if not isinstance(value, str) or not value.strip():
        raise BadRow(f"field {key!r} must be a non-empty string")
    return value


def _messages(value: Any, key: str) -> list[Message]:
    if not isinstance(value, list) or not value:
        raise BadRow(f"field {key!r} must be a non-empty list of messages")
    out = []
    for j, m in enumerate(value):
        if not isinstance(m, dict):
            raise BadRow(f"{key}[{j}] must be an object with role and content")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise BadRow(f"{key}[{j}].role: unknown role {role!r} (expected one of {', '.join(ROLES)})")
        if not isinstance(content, str):
            raise BadRow(f"{key}[{j}].content must be a string")
        out.append({"role": str(role), "content": content})
    return out


def _prompt(row: dict[str, Any]) -> list[Message]:
    value = row.get("prompt")
    if isinstance(value, list):
        return _messages(value, "prompt")
    chat = [{"role": "system", "content": row["system"]}] if isinstance(row.get("system"), str) else []
    return [*chat, {"role": "user", "content": _text(row, "prompt")}]


def parse_row(row: Any, method: AlignmentMethod) -> Example:
    """One raw row checked and normalised for `method`; raises `BadRow` naming the field."""
    if isinstance(row, BadRow):
        raise row
    if not isinstance(row, dict):
        raise BadRow("a row must be a JSON object")
    if method is AlignmentMethod.SFT:
        if "messages" in row:
            chat = _messages(row["messages"], "messages")
            if not any(m["role"] == "assistant" for m in chat):
                raise BadRow("messages: no assistant turn to learn from")
            return Example(chat)
        if "prompt" not in row and "response" not in row:
            raise BadRow("missing field 'messages' (or 'prompt' and 'response')")
        return Example([*_prompt(row), {"role": "assistant", "content": _text(row, "response")}])
    if method is AlignmentMethod.PPO:
        return Example(_prompt(row))
    if method in (AlignmentMethod.GRPO, AlignmentMethod.RLOO):
        return Example(_prompt(row), columns={k: v for k, v in row.items() if k not in ("prompt", "system")})
    if method is AlignmentMethod.KTO:
        label = row.get("label")
        if not isinstance(label, bool):
            raise BadRow("field 'label' must be true or false")
        return Example(_prompt(row), completion=_text(row, "completion"), label=label)
    prompt = _prompt(row)
    return Example(prompt, chosen=_text(row, "chosen"), rejected=_text(row, "rejected"))


def load_rows(
    uri: str, method: AlignmentMethod, fmt: DataFormat = DataFormat.AUTO, skip_bad_rows: bool = False
) -> Rows:
    """Every row under `uri` parsed for `method`; fails on the first bad row unless skipping."""
    files = _files(uri)
    if not files:
        raise InvalidInput(f"spec.data.uri: no data files at {uri}")
    rows = Rows([])
    for name, path in files:
        for where, raw in _read(name, path, fmt):
            try:
                rows.examples.append(parse_row(raw, method))
            except BadRow as exc:
                if not skip_bad_rows:
                    raise InvalidInput(f"{where}: {exc} (set spec.data.skipBadRows to skip bad rows)") from None
                rows.bad += 1
                if len(rows.reasons) < 5:
                    rows.reasons.append(f"{where}: {exc}")
    if not rows.examples:
        raise InvalidInput(f"spec.data.uri: no usable rows at {uri} ({rows.bad} bad)")
    return rows


def split(examples: list[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """(train, validation): a seeded shuffle, at least one validation row when the fraction is > 0
    and there are two rows or more."""
    order = list(examples)
    random.Random(seed).shuffle(order)
    n_val = round(len(order) * fraction)
    if fraction > 0 and len(order) >= 2:
        n_val = max(1, n_val)
    return order[n_val:], order[:n_val]
