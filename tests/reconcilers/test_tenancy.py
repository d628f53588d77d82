"""Tenancy in the store: resources of the same kind, name and spec in two namespaces never share a
prefix, adopt each other's result, or delete each other's artifacts."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, cast

from lmforge.api import KINDS
from lmforge.api.contract import RESULT_KEY, ProgressRecord, RecordType, StageName
from lmforge.api.kinds import Resource
from lmforge.api.meta import Status
from lmforge.operator.handlers import Controller
from lmforge.operator.local import LocalBackend
from lmforge.operator.reconcile import Observed, reconcile
from lmforge.operator.reconcile.reconciler import expected_runs
from lmforge.operator.reconcile.runs import resource_prefix
from lmforge.operator.settings import Settings
from lmforge.store import open_store

STORE = "s3://bucket/lmforge"
NOW = "2026-11-29T00:00:00Z"
SPEC = {"sources": [{"name": "s", "uri": "x.txt", "license": "MIT"}]}


def _dataset(namespace: str | None) -> Resource:
    meta: dict[str, Any] = {"name": "d"} if namespace is None else {"name": "d", "namespace": namespace}
    return KINDS["Dataset"].model.model_validate(
        {"apiVersion": "lmforge.io/v1alpha1", "kind": "Dataset", "metadata": meta, "spec": SPEC}
    )


def _observed(resource: Resource) -> Observed:
    return Observed(
        resource=resource, kind=resource.kind, name=resource.metadata.name, generation=1, status=Status(), store=STORE
    )


def _prefix(namespace: str | None) -> str:
    [(_, _, prefix)] = expected_runs(_observed(_dataset(namespace)))
    return prefix


def test_same_name_and_spec_in_two_namespaces_get_disjoint_prefixes() -> None:
    a, b = _prefix("team-a"), _prefix("team-b")
    assert a.startswith("datasets/team-a/d/") and b.startswith("datasets/team-b/d/")
    assert not a.startswith(b) and not b.startswith(a)
    assert _prefix(None).startswith("datasets/default/d/")  # the embedded runner's manifests name none
    run = reconcile(_observed(_dataset("team-a")), now=NOW).runs[0]
    assert run.spec.output == a


def test_a_result_in_another_namespace_is_never_adopted(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "store"))
    record = ProgressRecord(
        type=RecordType.RESULT, stage=StageName.DATASET, run_id="x", artifacts={"shards": "s3://evil/shards"}
    )
    store.put_bytes(f"{_prefix('team-a')}/{RESULT_KEY}", record.model_dump_json(by_alias=True).encode())
    backend = LocalBackend(store, tmp_path / "state", python="/nonexistent")
    [(name, stage, prefix_b)] = expected_runs(_observed(_dataset("team-b")))
    assert backend.observe(name, stage, prefix_b) is None  # team-b's run has not happened
    [(name, stage, prefix_a)] = expected_runs(_observed(_dataset("team-a")))
    seen = backend.observe(name, stage, prefix_a)
    assert seen is not None and seen.result is not None  # while team-a's own result is found


def test_clean_up_deletes_only_its_own_namespace(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "store"))
    for ns in ("team-a", "team-b"):
        store.put_bytes(f"{_prefix(ns)}/shards/MANIFEST.json", b"{}")
    ctl = Controller(Settings(store=str(tmp_path / "store")), cast(Any, object()), store)
    asyncio.run(ctl.cleanup_store("Dataset", "team-a", "d"))
    assert store.list(resource_prefix("Dataset", "team-a", "d")) == []
    assert store.list(resource_prefix("Dataset", "team-b", "d")) == [f"{_prefix('team-b')}/shards/MANIFEST.json"]
