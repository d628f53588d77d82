"""Release gates: each threshold checked against the metrics the tasks produced — `task.metric OP
value`, or `task.metric OP baseline.task.metric ± d` against the `baselineRef` suite's result, with
the difference's interval and significance from `stats.compare`. The operator evaluates the same
`Threshold` objects on the flat `<task>.<metric>` names (and the published `baseline.*` values), so
the stage and the reconciler cannot disagree."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lmforge.api.evalsuite import BASELINE_PREFIX, Threshold, parse_threshold
from lmforge.trainer.errors import InvalidInput
from lmforge.trainer.evaluate.stats import Comparison, Interval, ItemScores, compare


@dataclass
class Baseline:
    """What is known of the baseline suite's result: its flat metrics, and where its results.json
    had them, per-item scores and intervals (flat keys)."""

    name: str
    metrics: dict[str, float]
    items: dict[str, ItemScores] = field(default_factory=dict)
    intervals: dict[str, Interval] = field(default_factory=dict)

    @classmethod
    def from_results(cls, name: str, metrics: dict[str, float], results: dict[str, Any] | None) -> Baseline:
        """From the baseline's published metrics and its results.json (None for one without it)."""
        results = results or {}
        items = {
            f"{t}.{m}": ItemScores.from_json(s) for t, ms in (results.get("items") or {}).items() for m, s in ms.items()
        }
        intervals = {
            f"{t}.{m}": Interval.from_json(i)
            for t, ms in (results.get("intervals") or {}).items()
            for m, i in ms.items()
        }
        return cls(name, dict(metrics), items, intervals)


@dataclass(frozen=True)
class GateResult:
    """One threshold's outcome (a row of results.json `thresholds`)."""

    threshold: str
    observed: float
    passed: bool
    bound: float | None = None
    """The baseline's value plus the offset (baseline thresholds only)."""
    comparison: Comparison | None = None
    """Ours minus the baseline's, with its interval and significance (baseline thresholds only)."""

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"threshold": self.threshold, "observed": self.observed, "passed": self.passed}
        if self.comparison is not None:
            out.update(bound=self.bound, comparison=self.comparison.to_json())
        return out


def flatten(tasks: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """{task: {metric: v}} → {"task.metric": v}."""
    return {f"{task}.{metric}": value for task, metrics in tasks.items() for metric, value in metrics.items()}


def _observed(threshold: Threshold, tasks: dict[str, dict[str, float]]) -> float:
    produced = tasks.get(threshold.task)
    if produced is None:
        raise InvalidInput(
            f"threshold {threshold}: no task {threshold.task!r} produced metrics "
            f"(tasks: {', '.join(sorted(tasks)) or 'none'})"
        )
    if threshold.metric not in produced:
        raise InvalidInput(
            f"threshold {threshold}: task {threshold.task} produced no metric "
            f"{threshold.metric!r} (it produced {', '.join(sorted(produced))})"
        )
    return produced[threshold.metric]


def evaluate(
    thresholds: list[str] | list[Threshold],
    tasks: dict[str, dict[str, float]],
    baseline: Baseline | None = None,
    items: dict[str, ItemScores] | None = None,
    intervals: dict[str, Interval] | None = None,
) -> list[GateResult]:
    """Every threshold's result; a threshold naming a metric no task (or, for a baseline threshold,
    the baseline) produced is an input error. `items`/`intervals` are ours, by flat key."""
    items, intervals = items or {}, intervals or {}
    results = []
    for item in thresholds:
        threshold = parse_threshold(item) if isinstance(item, str) else item
        observed = _observed(threshold, tasks)
        if threshold.baseline is None:
            results.append(GateResult(str(threshold), observed, threshold.holds(observed)))
            continue
        if baseline is None:
            raise InvalidInput(f"threshold {threshold}: compares with a baseline, but there is no baseline result")
        key = f"{threshold.baseline[0]}.{threshold.baseline[1]}"
        if key not in baseline.metrics:
            raise InvalidInput(
                f"threshold {threshold}: the baseline EvalSuite/{baseline.name} produced no metric "
                f"{key} (it produced {', '.join(sorted(baseline_metrics(baseline))) or 'none'})"
            )
        values = {f"{BASELINE_PREFIX}{key}": baseline.metrics[key]}
        comparison = compare(
            items.get(threshold.key),
            baseline.items.get(key),
            observed,
            baseline.metrics[key],
            intervals.get(threshold.key),
            baseline.intervals.get(key),
        )
        results.append(
            GateResult(str(threshold), observed, threshold.holds(observed, values), threshold.bound(values), comparison)
        )
    return results


def baseline_metrics(baseline: Baseline) -> dict[str, float]:
    """The baseline's own task metrics (not its gate, nor the baseline values it compared with)."""
    return {k: v for k, v in baseline.metrics.items() if k != "gate_passed" and not k.startswith(BASELINE_PREFIX)}


def baseline_values(thresholds: list[Threshold], baseline: Baseline | None) -> dict[str, float]:
    """`baseline.<task>.<metric>` → the baseline's value, for every baseline threshold (published with
    the suite's metrics so the operator's gate check sees the same bound)."""
    if baseline is None:
        return {}
    return {
        t.baseline_key: baseline.metrics[f"{t.baseline[0]}.{t.baseline[1]}"]
        for t in thresholds
        if t.baseline is not None and t.baseline_key is not None
    }


def deltas(ours: dict[str, float], baseline: dict[str, float]) -> dict[str, float]:
    """Ours minus the baseline's value, for every flat metric both have."""
    return {
        key: ours[key] - baseline[key]
        for key in sorted(ours)
        if key in baseline and key != "gate_passed" and not key.startswith(BASELINE_PREFIX)
    }


def comparisons(
    ours: dict[str, float], items: dict[str, ItemScores], intervals: dict[str, Interval], baseline: Baseline
) -> dict[str, dict[str, Any]]:
    """For every metric both have: the difference, its interval and significance."""
    return {
        key: compare(
            items.get(key),
            baseline.items.get(key),
            ours[key],
            baseline.metrics[key],
            intervals.get(key),
            baseline.intervals.get(key),
        ).to_json()
        for key in deltas(ours, baseline.metrics)
    }
