"""Experiment tracking of stage runs, fed from the one place every stage already reports through.

`ProgressReporter` hands each `ProgressRecord` (progress, result, error) to a `Tracker`; the stage
code itself never calls a tracking API. What a run is (its name, tags, parameters) comes from the
`StageSpec` alone, so every stage gets the same shape of run for free:

* MLflow (`lmforge.trainer.tracking.mlflow`) when `$MLFLOW_TRACKING_URI` is set (the operator passes
  the chart's `tracking.uri` to its stage pods; `lmforge run --tracking-uri` sets it locally) and the
  resource's `spec.tracking.enabled` is true;
* TensorBoard event files (`lmforge.trainer.tracking.tensorboard`) when `$LMFORGE_TENSORBOARD_DIR`
  is set (the embedded runner sets it to `<store>/tensorboard` by default).

A tracker must never fail or slow the stage: `record` only enqueues, and `close` waits a bounded
time, then says on stderr what could not be sent.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any, Protocol

from lmforge.api.contract import ProgressRecord, StageSpec
from lmforge.api.tracking import DEFAULT_EXPERIMENT, Tracking

TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
TENSORBOARD_ENV = "LMFORGE_TENSORBOARD_DIR"


class Tracker(Protocol):
    """Receives a stage run's records; implementations queue them and send in the background."""

    def record(self, record: ProgressRecord) -> None:
        """Take one record; must return at once."""

    def close(self, timeout: float = ...) -> None:
        """Send what is queued (at most `timeout` seconds), then release resources."""


@dataclass
class RunInfo:
    """What one tracked stage run is, derived from its StageSpec."""

    run_id: str
    """The LMForge run id: the MLflow run name, and the TensorBoard directory."""
    kind: str
    name: str
    namespace: str
    stage: str
    experiment: str
    tags: dict[str, str]
    params: dict[str, str]
    inputs: dict[str, dict[str, str]] = field(default_factory=dict)
    """`Kind/name` → its artifacts (name → URI): how the runs of one pipeline are linked."""
    lineage: list[str] = field(default_factory=list)
    input_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    tracking: Tracking = field(default_factory=Tracking)
    store: str = ""


def flatten(value: Any, prefix: str = "") -> dict[str, str]:
    """Nested dicts → dotted keys; lists and scalars → their JSON text (MLflow params are strings)."""
    if isinstance(value, dict) and value:
        out: dict[str, str] = {}
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if not prefix:
        return {}
    return {prefix: value if isinstance(value, str) else json.dumps(value, sort_keys=True)}


def run_info(spec: StageSpec) -> RunInfo:
    """Name, tags and parameters of a stage run (the resolved spec, flattened, without `tracking`)."""
    resource = spec.resource
    meta = resource.get("metadata") or {}
    body = dict(resource.get("spec") or {})
    tracking = Tracking.model_validate(body.pop("tracking", None) or {})
    namespace = meta.get("namespace") or "default"
    kind, name = str(resource.get("kind")), str(meta.get("name"))
    spec_hash = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:12]
    experiment = tracking.experiment or (
        DEFAULT_EXPERIMENT if namespace == "default" else f"{DEFAULT_EXPERIMENT}/{namespace}"
    )
    tags = {
        "lmforge.kind": kind,
        "lmforge.name": name,
        "lmforge.namespace": namespace,
        "lmforge.stage": spec.stage.value,
        "lmforge.run_id": spec.run_id,
        "lmforge.spec_hash": spec_hash,
        "lmforge.output": spec.output,
        "lmforge.inputs": ",".join(sorted(spec.inputs)),
        **tracking.tags,
    }
    lineage = sorted({item for key, inp in spec.inputs.items() for item in [key, *inp.lineage]})
    if lineage:
        tags["lmforge.lineage"] = " > ".join(lineage)
    return RunInfo(
        run_id=spec.run_id,
        kind=kind,
        name=name,
        namespace=namespace,
        stage=spec.stage.value,
        experiment=experiment,
        tags=tags,
        params=flatten(body),
        inputs={k: dict(v.artifacts) for k, v in spec.inputs.items()},
        lineage=lineage,
        input_metrics={k: dict(v.metrics) for k, v in spec.inputs.items()},
        tracking=tracking,
        store=spec.store,
    )


class Trackers:
    """Fan-out to several trackers; the reporter holds one of these (possibly empty)."""

    def __init__(self, trackers: list[Tracker]) -> None:
        self.trackers = trackers

    def record(self, record: ProgressRecord) -> None:
        for t in self.trackers:
            t.record(record)

    def close(self, timeout: float = 30.0) -> None:
        for t in self.trackers:
            t.close(timeout)


def trackers_for(spec: StageSpec, env: dict[str, str] | None = None) -> Trackers:
    """The trackers a stage run gets: none on workers other than 0 (they report the same run)."""
    e = dict(os.environ if env is None else env)
    if spec.worker.index != 0 or e.get("RANK", "0") != "0":
        return Trackers([])
    info = run_info(spec)
    out: list[Tracker] = []
    if info.tracking.enabled and e.get(TRACKING_URI_ENV):
        from lmforge.trainer.tracking.mlflow import MlflowTracker

        out.append(MlflowTracker(e[TRACKING_URI_ENV], info))
    if e.get(TENSORBOARD_ENV):
        from lmforge.trainer.tracking.tensorboard import TensorBoardTracker

        out.append(TensorBoardTracker(os.path.join(e[TENSORBOARD_ENV], info.run_id)))
    return Trackers(out)
