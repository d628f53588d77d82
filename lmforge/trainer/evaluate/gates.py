"""Release gates: each `task.metric OP value` threshold checked against the metrics the tasks
produced. The operator evaluates the same `Threshold` objects on the flat `<task>.<metric>` names,
so the stage and the reconciler cannot disagree."""

from __future__ import annotations

from dataclasses import dataclass

from lmforge.api.evalsuite import Threshold, parse_threshold
from lmforge.trainer.errors import InvalidInput


@dataclass(frozen=True)
class GateResult:
    """One threshold's outcome (a row of results.json `thresholds`)."""

    threshold: str
    observed: float
    passed: bool

    def as_dict(self) -> dict[str, object]:
        return {"threshold": self.threshold, "observed": self.observed, "passed": self.passed}


def flatten(tasks: dict[str, dict[str, float]]) -> dict[str, float]:
    """{task: {metric: v}} → {"task.metric": v}."""
    return {f"{task}.{metric}": value for task, metrics in tasks.items() for metric, value in metrics.items()}


def evaluate(thresholds: list[str] | list[Threshold], tasks: dict[str, dict[str, float]]) -> list[GateResult]:
    """Every threshold's result; a threshold naming a metric no task produced is an input error."""
    results = []
    for item in thresholds:
        threshold = parse_threshold(item) if isinstance(item, str) else item
        produced = tasks.get(threshold.task)
        if produced is None:
            raise InvalidInput(f"threshold {threshold}: no task {threshold.task!r} produced metrics "
                               f"(tasks: {', '.join(sorted(tasks)) or 'none'})")
        if threshold.metric not in produced:
            raise InvalidInput(f"threshold {threshold}: task {threshold.task} produced no metric "
                               f"{threshold.metric!r} (it produced {', '.join(sorted(produced))})")
        observed = produced[threshold.metric]
        results.append(GateResult(str(threshold), observed, threshold.holds(observed)))
    return results


def deltas(ours: dict[str, float], baseline: dict[str, float]) -> dict[str, float]:
    """Ours minus the baseline's value, for every flat metric both have."""
    return {key: ours[key] - baseline[key] for key in sorted(ours) if key in baseline and key != "gate_passed"}
