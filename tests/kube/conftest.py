"""Shared helpers for the Kubernetes backend's pure tests: stage runs from the examples."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from lmforge.api.kinds import KINDS, Resource
from lmforge.api.meta import Condition, ConditionStatus, Phase, Status
from lmforge.operator.kube.meta import Owner
from lmforge.operator.reconcile import InputState, Observed, StageRun, reconcile
from lmforge.operator.reconcile.types import ObservedRun
from lmforge.operator.settings import Settings

REPO = Path(__file__).resolve().parents[2]
STORE = "s3://bucket/lmforge"
SETTINGS = Settings(
    store=STORE,
    trainer_image="registry.example/trainer:1",
    s3_secret="lmforge-s3",
    s3_endpoint="http://s3.example:8333",
)


def pipeline() -> dict[str, Resource]:
    """The GPU pipeline example, by name."""
    docs = yaml.safe_load_all((REPO / "examples/cluster/pipeline.yaml").read_text())
    out: dict[str, Resource] = {}
    for doc in docs:
        res = KINDS[doc["kind"]].model.model_validate(doc)
        out[f"{res.kind}/{res.metadata.name}"] = res
    return out


def parse(doc: dict[str, Any]) -> Resource:
    return KINDS[doc["kind"]].model.model_validate(doc)


def ready_inputs(resource: Resource, gate: bool = True) -> dict[str, InputState]:
    """Every reference of `resource` Ready with a model/shards artifact."""
    from lmforge.api.kinds import references

    out = {}
    for ref in references(resource):
        conds = [Condition(type="Ready", status=ConditionStatus.TRUE, reason="Completed")]
        if ref.kind == "EvalSuite":
            conds.append(
                Condition(
                    type="GatePassed",
                    status=ConditionStatus.TRUE if gate else ConditionStatus.FALSE,
                    reason="GatePassed",
                    message="ok",
                )
            )
        out[f"{ref.kind}/{ref.name}"] = InputState(
            ref.kind,
            ref.name,
            True,
            Status(
                phase=Phase.SUCCEEDED,
                conditions=conds,
                artifacts={"model": f"{STORE}/m", "shards": f"{STORE}/s", "tokenizer": f"{STORE}/t"},
            ),
        )
    return out


def first_run(resource: Resource, runs: dict[str, ObservedRun] | None = None) -> StageRun:
    obs = Observed(
        resource=resource,
        kind=resource.kind,
        name=resource.metadata.name,
        generation=1,
        status=Status(),
        store=STORE,
        inputs=ready_inputs(resource),
        runs=runs or {},
    )
    decision = reconcile(obs)
    assert decision.runs, decision.status
    return decision.runs[0]


def owner(resource: Resource, namespace: str = "ml") -> Owner:
    return Owner(
        resource.kind, resource.metadata.name, namespace, "uid-1234", tuple(sorted(resource.metadata.labels.items()))
    )
