"""Fixtures for the align stage: a tiny Llama in a local store, synthetic rows with learnable rules,
and a helper that runs the stage in-process through the same context the CLI builds."""

from __future__ import annotations

import io
import json
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from lmforge.api.contract import ProgressRecord, StageName, StageSpec, parse_record
from lmforge.trainer.context import StageContext, StageOutcome
from lmforge.trainer.progress import ProgressReporter

NOUNS = ["cat", "dog", "bird", "fish", "tree", "river", "stone", "cloud", "apple", "lamp"]
ADJS = ["red", "small", "quiet", "bright", "green", "old", "happy", "cold"]
GOOD, BAD = ADJS[:4], ADJS[4:]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from support.tiny import make_model

    return make_model(tmp_path_factory.mktemp("tiny-base"))


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def sft_rows(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """ "what is the ADJ NOUN ?" → "the ADJ NOUN is here ." — the answer copies the question."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.choice(ADJS), rng.choice(NOUNS)
        out.append(
            {
                "messages": [
                    {"role": "system", "content": "answer briefly"},
                    {"role": "user", "content": f"what is the {a} {b} ?"},
                    {"role": "assistant", "content": f"the {a} {b} is here ."},
                ]
            }
        )
    return out


def preference_rows(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Chosen answers name the asked noun with a warm adjective; rejected ones another noun with a
    cold one: learnable from the answer's tokens alone."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        b = rng.choice(NOUNS)
        other = rng.choice([x for x in NOUNS if x != b])
        out.append(
            {
                "prompt": f"name the {b}",
                "chosen": f"the {rng.choice(GOOD)} {b} .",
                "rejected": f"the {rng.choice(BAD)} {other} .",
            }
        )
    return out


def make_ctx(
    root: Path,
    job_spec: dict[str, Any],
    *,
    name: str = "job",
    base_dir: Path | None = None,
    inputs: dict[str, Any] | None = None,
) -> StageContext:
    spec = StageSpec(
        stage=StageName.ALIGN,
        resource={
            "apiVersion": "lmforge.io/v1alpha1",
            "kind": "AlignmentJob",
            "metadata": {"name": name},
            "spec": job_spec,
        },
        store=str(root / "store"),
        output=f"runs/{name}",
        run_id=f"{name}-1",
        inputs=inputs or {},
        base_dir=str(base_dir) if base_dir else None,
    )
    reporter = ProgressReporter(StageName.ALIGN, spec.run_id, None, stream=io.StringIO(), line_interval=0)
    return StageContext.from_spec(spec, reporter)


def records(ctx: StageContext) -> list[ProgressRecord]:
    """The progress records the stage printed."""
    stream = ctx.reporter.stream
    assert isinstance(stream, io.StringIO)
    return [r for r in map(parse_record, stream.getvalue().splitlines()) if r is not None]


RunStage = Callable[..., tuple[StageContext, StageOutcome]]


@pytest.fixture
def run_stage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> RunStage:
    """Run the align stage in-process; returns (context, outcome)."""
    monkeypatch.setenv("LMFORGE_WORK_DIR", str(tmp_path / "work"))
    monkeypatch.setenv("LMFORGE_CACHE", str(tmp_path / "cache"))

    def run(job_spec: dict[str, Any], **kwargs: Any) -> tuple[StageContext, StageOutcome]:
        from lmforge.trainer.align.stage import run as align

        ctx = make_ctx(tmp_path, job_spec, **kwargs)
        return ctx, align(ctx)

    return run
