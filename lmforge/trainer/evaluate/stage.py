"""`python -m lmforge.trainer evaluate`: run an EvalSuite's tasks against a model artifact or an
endpoint, check its thresholds, and publish `results` (results.json).

A failed gate is a result, not a failure: the stage exits 0 and reports `gate_passed` = 0, and the
operator turns that into the EvalSuite's Failed condition.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmforge.api.contract import ArtifactName
from lmforge.api.evalsuite import EvalSuiteSpec, EvalTask, TaskType
from lmforge.store import StoreError, open_store, read_manifest
from lmforge.trainer.artifacts import fetch, publish, split_uri
from lmforge.trainer.context import StageContext, StageOutcome
from lmforge.trainer.errors import InvalidInput
from lmforge.trainer.evaluate import code, gates, generation, multiple_choice, perplexity, safety, stats
from lmforge.trainer.evaluate.backend import Backend
from lmforge.trainer.evaluate.judge import Judge
from lmforge.trainer.evaluate.stats import ItemScores
from lmforge.trainer.evaluate.tasks import (
    ChoiceRow,
    CodeRow,
    GenerationRow,
    Row,
    SafetyRow,
    TextRow,
    load_rows,
)

RESULTS_FILE = "results.json"


@dataclass
class Planned:
    """A task with its rows loaded (or its validation shards located), before any model runs."""

    task: EvalTask
    rows: list[Row] = field(default_factory=list)
    shots: list[Row] = field(default_factory=list)
    shards_uri: str | None = None
    classifier_dir: Path | None = None
    """Safety: the local copy of the task's classifier model."""

    @property
    def items(self) -> int:
        return len(self.rows) if self.shards_uri is None else 0


def model_uri(ctx: StageContext, spec: EvalSuiteSpec) -> str:
    """The model artifact's URI (from the referenced resource, or the user's `uri`)."""
    ref = spec.model_ref
    assert ref is not None
    if ref.uri is not None:
        return ctx.resolve(ref.uri)
    assert ref.kind is not None and ref.name is not None
    found = ctx.input(ref.kind.value, ref.name).artifacts.get(ArtifactName.MODEL.value)
    if found is None:
        raise InvalidInput(f"spec.modelRef: {ref.kind.value}/{ref.name} has no model artifact (is it Ready?)")
    return found


def classifier_dir(ctx: StageContext, task: EvalTask) -> Path | None:
    """The local directory of a safety task's classifier model (fetched before anything runs)."""
    if task.classifier is None:
        return None
    ref, where = task.classifier.model_ref, f"task {task.name}: classifier.modelRef"
    if ref.uri is not None:
        uri, need_manifest = ctx.resolve(ref.uri), False
    else:
        assert ref.kind is not None and ref.name is not None
        found = ctx.input(ref.kind.value, ref.name).artifacts.get(ArtifactName.MODEL.value)
        if found is None:
            raise InvalidInput(f"{where}: {ref.kind.value}/{ref.name} has no model artifact (is it Ready?)")
        uri, need_manifest = found, True
    try:
        local = fetch(uri, require_manifest=need_manifest)
    except StoreError as exc:
        raise InvalidInput(f"{where}: {uri} is not readable: {exc}") from None
    if not (local / "config.json").exists():
        raise InvalidInput(f"{where}: {uri} is not a Hugging Face model directory (no config.json)")
    return local


def dataset_shards(uri: str, task: EvalTask) -> str:
    """The validation shards recorded in the model artifact's manifest (`metadata.dataset.shards`)."""
    root, leaf = split_uri(uri)
    try:
        manifest = read_manifest(open_store(root), leaf)
    except StoreError as exc:
        raise InvalidInput(f"task {task.name}: cannot read the model manifest at {uri}: {exc}") from None
    shards = ((manifest.metadata if manifest else {}).get("dataset") or {}).get("shards")
    if not isinstance(shards, str):
        raise InvalidInput(
            f"task {task.name}: no dataUri, and the model at {uri} records no dataset "
            "(manifest metadata dataset.shards); give the task a dataUri of text rows"
        )
    return shards


def plan(ctx: StageContext, spec: EvalSuiteSpec) -> list[Planned]:
    """Load and validate every task's rows first, so bad data fails before the model loads."""
    planned = []
    for task in spec.tasks:
        if task.type is TaskType.PERPLEXITY and task.data_uri is None:
            if spec.model_ref is None:
                raise InvalidInput(f"task {task.name}: endpoint evaluation needs a dataUri for perplexity")
            planned.append(Planned(task, shards_uri=dataset_shards(model_uri(ctx, spec), task)))
            continue
        rows = load_rows(task, ctx.resolve(task.data_uri) if task.data_uri else None)
        shots: list[Row] = []
        if task.num_fewshot and task.type in (TaskType.MULTIPLE_CHOICE, TaskType.GENERATION):
            if task.num_fewshot >= len(rows):
                raise InvalidInput(f"task {task.name}: numFewshot {task.num_fewshot} leaves no rows of {len(rows)}")
            shots, rows = rows[: task.num_fewshot], rows[task.num_fewshot :]
        if task.type is TaskType.SAFETY:
            rows = list(safety.select([r for r in rows if isinstance(r, SafetyRow)], task.limit))
        else:
            rows = rows[: task.limit]
        planned.append(Planned(task, rows, shots, classifier_dir=classifier_dir(ctx, task)))
    return planned


def open_backend(ctx: StageContext, spec: EvalSuiteSpec) -> Backend:
    if spec.endpoint is not None:
        from lmforge.trainer.evaluate.endpoint import EndpointBackend

        url = spec.endpoint.url
        if spec.endpoint.release_ref is not None:
            name = spec.endpoint.release_ref.name
            url = ctx.input("ModelRelease", name).artifacts.get("endpoint")
            if url is None:
                raise InvalidInput(f"spec.endpoint.releaseRef: ModelRelease/{name} has no endpoint (is it serving?)")
        assert url is not None
        return EndpointBackend(url, spec.endpoint.model, batch_size=spec.batch_size)
    from lmforge.trainer.evaluate.hf import HFBackend

    uri = model_uri(ctx, spec)
    try:
        local = fetch(uri, require_manifest=spec.model_ref is not None and spec.model_ref.uri is None)
    except StoreError as exc:
        raise InvalidInput(f"spec.modelRef: the model artifact {uri} is not Ready: {exc}") from None
    if not (local / "config.json").exists():
        raise InvalidInput(f"spec.modelRef: {uri} is not a Hugging Face model directory (no config.json)")
    return HFBackend(local, spec.batch_size)


def run_task(item: Planned, backend: Backend, seed: int, advance: Any) -> dict[str, ItemScores]:
    task, rows = item.task, item.rows
    if item.shards_uri is not None:
        from lmforge.trainer.evaluate.hf import HFBackend

        assert isinstance(backend, HFBackend)
        sequences = perplexity.validation_sequences(fetch(item.shards_uri), task.limit)
        return perplexity.token_perplexity(backend.token_nll, sequences, advance, f"task {task.name}")
    if task.type is TaskType.PERPLEXITY:
        return perplexity.text_perplexity(
            backend, [r for r in rows if isinstance(r, TextRow)], advance, f"task {task.name}"
        )
    if task.type is TaskType.MULTIPLE_CHOICE:
        return multiple_choice.evaluate(
            backend,
            [r for r in rows if isinstance(r, ChoiceRow)],
            [r for r in item.shots if isinstance(r, ChoiceRow)],
            advance,
            task.prompt_template,
        )
    if task.type is TaskType.GENERATION:
        return generation.evaluate(
            backend,
            [r for r in rows if isinstance(r, GenerationRow)],
            [r for r in item.shots if isinstance(r, GenerationRow)],
            task.max_new_tokens,
            seed,
            advance,
        )
    if task.type is TaskType.CODE:
        return code.evaluate(
            backend,
            [r for r in rows if isinstance(r, CodeRow)],
            task.samples,
            task.max_new_tokens,
            task.timeout_seconds,
            seed,
            advance,
            task.isolation,
        )
    judge: Judge | None = None
    unsafe_at = 0.5
    if task.classifier is not None and item.classifier_dir is not None:
        from lmforge.trainer.evaluate.judge import ClassifierJudge

        judge = ClassifierJudge(item.classifier_dir, task.classifier.unsafe_labels, task.classifier.batch_size)
        unsafe_at = task.classifier.threshold
    llm = None
    if task.judge is not None:
        from lmforge.trainer.evaluate.judge import LlmJudge

        key = os.environ.get(task.judge.api_key_env) if task.judge.api_key_env else None
        if task.judge.api_key_env and not key:
            raise InvalidInput(
                f"task {task.name}: judge.apiKeyEnv {task.judge.api_key_env} is not set "
                "(set it from a Secret with compute.secretEnv)"
            )
        judge = llm = LlmJudge(
            task.judge.url,
            task.judge.model,
            task.judge.prompt_template,
            api_key=key,
            max_tokens=task.judge.max_tokens,
            concurrency=task.judge.concurrency,
        )
    safety_rows = [r for r in rows if isinstance(r, SafetyRow)]
    metrics = safety.evaluate(
        backend, safety_rows, task.max_new_tokens, seed, advance, judge=judge, unsafe_at=unsafe_at
    )
    if llm is not None:  # replies that were no verdict (each counted unsafe): a judge that is not judging
        metrics["judge_unparsed"] = ItemScores([float(llm.unparsed)], ids=["all"])
    return metrics


def run(ctx: StageContext) -> StageOutcome:
    spec = ctx.resource.spec
    assert isinstance(spec, EvalSuiteSpec)
    planned = plan(ctx, spec)
    backend = open_backend(ctx, spec)
    total = sum(p.items for p in planned)
    done = 0
    tasks: dict[str, dict[str, float]] = {}

    def advance(n: int) -> None:
        nonlocal done, total
        done += n
        total = max(total, done)
        ctx.reporter.progress(done, total, unit="item", metrics=gates.flatten(tasks))

    scores: dict[str, dict[str, ItemScores]] = {}
    for item in planned:
        if item.shards_uri is not None:
            total += item.task.limit or 0
        scores[item.task.name] = run_task(item, backend, spec.seed, advance)
        tasks[item.task.name] = {m: s.value() for m, s in scores[item.task.name].items()}
        ctx.reporter.progress(
            done, total, unit="item", metrics=gates.flatten(tasks), message=f"task {item.task.name} done", force=True
        )

    intervals = {t: {m: stats.interval(s) for m, s in ms.items()} for t, ms in scores.items()}
    flat, flat_items, flat_intervals = gates.flatten(tasks), gates.flatten(scores), gates.flatten(intervals)
    baseline = load_baseline(ctx, spec)
    thresholds = spec.parsed_thresholds()
    outcome = gates.evaluate(thresholds, tasks, baseline, flat_items, flat_intervals)
    passed = all(r.passed for r in outcome)
    results: dict[str, Any] = {
        "model": backend.description,
        "tasks": tasks,
        "thresholds": [r.as_dict() for r in outcome],
        "passed": passed,
        "intervals": {t: {m: i.to_json() for m, i in ms.items()} for t, ms in intervals.items()},
        "items": {t: {m: s.to_json() for m, s in ms.items()} for t, ms in scores.items()},
    }
    if baseline is not None:
        results["baseline"] = {
            "name": baseline.name,
            "deltas": gates.deltas(flat, baseline.metrics),
            "comparisons": gates.comparisons(flat, flat_items, flat_intervals, baseline),
        }
    published = {**flat, **gates.baseline_values(thresholds, baseline)}
    out_dir = ctx.work_dir / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / RESULTS_FILE).write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    uri = publish(
        ctx, ArtifactName.RESULTS.value, Path(out_dir), "eval-results", {"passed": passed, "metrics": published}
    )
    return StageOutcome({ArtifactName.RESULTS.value: uri}, {**published, "gate_passed": 1.0 if passed else 0.0})


def load_baseline(ctx: StageContext, spec: EvalSuiteSpec) -> gates.Baseline | None:
    """The `baselineRef` suite's metrics, with its per-item scores and intervals when its results.json
    has them (one written before they existed compares unpaired, from the metrics alone)."""
    if spec.baseline_ref is None:
        return None
    base = ctx.input("EvalSuite", spec.baseline_ref.name)
    results: dict[str, Any] | None = None
    uri = base.artifacts.get(ArtifactName.RESULTS.value)
    if uri is not None:
        try:
            results = json.loads((fetch(uri) / RESULTS_FILE).read_text())
        except (StoreError, OSError, ValueError):
            results = None
    return gates.Baseline.from_results(base.name, dict(base.metrics), results)
