"""The registry aliases follow the rollout, against a real MLflow server (tests/support/mlflow.py), read
back through the real `MlflowClient`: the version serving is `champion`; a candidate smoke-tested beside
it is `challenger`; promoted, it becomes `champion` and nobody is `challenger`; rolled back, `champion`
stays on the stable version. First the alias backend alone, then `lmforge run`'s loop through a
blue-green switch (the stage script's servers register their versions through the real tracker), and
the kopf operator's handler, which hands each reconciled release to the same backend."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from support.mlflow import MlflowServer, free_port, mlflow_server
from support.waiting import eventually

from lmforge.api.meta import Condition, ConditionStatus, Phase, Rollout, RolloutState, Status
from lmforge.api.release import ModelRelease
from lmforge.api.tracking import RegistryAlias
from lmforge.operator.aliases import AliasBackend
from lmforge.operator.embedded.runner import Outcome
from lmforge.operator.handlers import Controller
from lmforge.operator.local.backend import free_port as free_serve_port
from lmforge.operator.reconcile import Decision
from lmforge.operator.settings import Settings
from lmforge.store import open_store
from lmforge.store.mlflow import MlflowRest

from .test_blue_green import reload, served, write
from .test_runner import Harness

OLD_URL, NEW_URL = "http://127.0.0.1:8000/v1", "http://127.0.0.1:8001/v1"


@pytest.fixture(scope="module")
def mlflow() -> Iterator[MlflowServer]:
    with mlflow_server() as server:
        yield server


class Counting(MlflowRest):
    """The real client, counting the requests it makes."""

    def __init__(self, uri: str) -> None:
        super().__init__(uri, timeout=2.0)
        self.calls = 0

    def call(self, method: str, path: str, body: Any = None, query: Any = None) -> dict[str, Any]:
        self.calls += 1
        return super().call(method, path, body, query)


def release(name: str, model: str, enabled: bool = True) -> ModelRelease:
    return ModelRelease.model_validate(
        {
            "apiVersion": "lmforge.io/v1alpha1",
            "kind": "ModelRelease",
            "metadata": {"name": name},
            "spec": {
                "modelRef": {"kind": "PretrainJob", "name": "p"},
                "tracking": {"registeredModel": model, "enabled": enabled},
            },
        }
    )


def register(mlflow: MlflowServer, model: str, *run_ids: str) -> None:
    """Versions of `model` tagged with these LMForge run ids, as the serve stage registers them."""
    c = MlflowRest(mlflow.url)
    experiment = c.experiment_id("aliases")
    c.ensure_registered_model(model)
    for rid in run_ids:
        run = c.create_run(experiment, rid, {"lmforge.run_id": rid}, int(time.time() * 1000))
        mlflow_run = run["info"]["run_id"]
        c.create_model_version(model, f"runs:/{mlflow_run}/model", mlflow_run, {"lmforge.run_id": rid})


def status(rollout: RolloutState | None, reason: str, run_id: str = "r-new") -> Status:
    return Status(
        phase=Phase.SERVING,
        run_id=run_id,
        endpoint=OLD_URL,
        conditions=[Condition(type="Ready", status=ConditionStatus.TRUE, reason=reason)],
        rollout=None
        if rollout is None
        else Rollout(
            state=rollout, stable="r-old", stable_endpoint=OLD_URL, candidate="r-new", candidate_endpoint=NEW_URL
        ),
    )


def by_run(versions: list[dict[str, Any]]) -> dict[str, list[str]]:
    """LMForge run id → aliases of its version (from the `model` query's answer)."""
    return {v["tags"]["lmforge.run_id"]: v["aliases"] for v in versions}


def aliases_become(mlflow: MlflowServer, model: str, want: Callable[[dict[str, list[str]]], bool]) -> None:
    """Eventually the versions of `model`, read back through the real MlflowClient, satisfy `want`."""
    mlflow.eventually("model", lambda vs: want(by_run(vs)), 60, name=model)


def test_the_backend_moves_the_aliases_through_a_switch_and_sends_each_change_once(mlflow: MlflowServer) -> None:
    register(mlflow, "unit", "r-old", "r-new")
    client = Counting(mlflow.url)
    backend = AliasBackend(mlflow.url, client=client)
    rel = release("rel", "unit")
    try:
        backend.sync(rel, status(None, "Serving", run_id="r-old"))
        aliases_become(mlflow, "unit", lambda found: found == {"r-old": ["champion"], "r-new": []})

        backend.sync(rel, status(RolloutState.SMOKE_TESTING, "SmokeTesting"))
        want = {"r-old": ["champion"], "r-new": ["challenger"]}
        aliases_become(mlflow, "unit", lambda found: found == want)
        eventually(lambda: not backend.pending(), timeout=10)
        calls = client.calls
        for _ in range(5):  # the same status again: nothing to send
            backend.sync(rel, status(RolloutState.SMOKE_TESTING, "SmokeTesting"))
        assert not backend.pending() and client.calls == calls

        backend.sync(rel, status(RolloutState.PROMOTED, "Serving"))
        want = {"r-old": [], "r-new": ["champion"]}
        aliases_become(mlflow, "unit", lambda found: found == want)
        assert backend.failures == 0
    finally:
        backend.close()


def test_a_rolled_back_candidate_loses_challenger_and_the_stable_stays_champion(mlflow: MlflowServer) -> None:
    register(mlflow, "back", "r-old", "r-new")
    backend = AliasBackend(mlflow.url)
    rel = release("rel", "back")
    try:
        backend.sync(rel, status(RolloutState.SMOKE_TESTING, "SmokeTesting"))
        want = {"r-old": ["champion"], "r-new": ["challenger"]}
        aliases_become(mlflow, "back", lambda found: found == want)
        backend.sync(rel, status(RolloutState.ROLLED_BACK, "RolledBack"))
        want = {"r-old": ["champion"], "r-new": []}
        aliases_become(mlflow, "back", lambda found: found == want)
    finally:
        backend.close()


def test_an_unreachable_registry_never_blocks_and_the_change_is_made_once_it_answers(mlflow: MlflowServer) -> None:
    register(mlflow, "away", "r-old")
    backend = AliasBackend(f"http://127.0.0.1:{free_port()}")  # nobody listens there
    rel = release("rel", "away")
    try:
        t0 = time.perf_counter()
        for _ in range(20):
            backend.sync(rel, status(None, "Serving", run_id="r-old"))
        assert time.perf_counter() - t0 < 0.5  # a reconcile never waits for the registry
        eventually(lambda: backend.failures >= 2, timeout=30)  # retried
        assert backend.pending() == {
            ("away", RegistryAlias.CHAMPION): "r-old",
            ("away", RegistryAlias.CHALLENGER): None,
        }
        backend.client.base = mlflow.url  # the server is back
        aliases_become(mlflow, "away", lambda found: found == {"r-old": ["champion"]})
        eventually(lambda: not backend.pending(), timeout=10)
    finally:
        backend.close()


def test_a_release_with_tracking_off_is_left_alone(mlflow: MlflowServer) -> None:
    register(mlflow, "off", "r-old")
    backend = AliasBackend(mlflow.url)
    try:
        backend.sync(release("rel", "off", enabled=False), status(None, "Serving", run_id="r-old"))
        assert backend.pending() == {}
    finally:
        backend.close()
    assert by_run(mlflow.query("model", name="off")) == {"r-old": []}


def test_lmforge_run_moves_champion_on_promotion_and_keeps_it_on_rollback(mlflow: MlflowServer, tmp_path: Path) -> None:
    port = free_serve_port()
    manifests = write(tmp_path / "m", port, "good", 64)
    backend = AliasBackend(mlflow.url)
    h = Harness(tmp_path, manifests, serve=True, env={"MLFLOW_TRACKING_URI": mlflow.url}, aliases=backend)

    def stepped_until(state: RolloutState, old: str) -> bool:
        h.runner.step()
        rollout = h.runner.state.resources["ModelRelease/r"].status.rollout
        return rollout is not None and rollout.state is state and rollout.candidate != old

    try:
        assert h.runner.run() is Outcome.DONE
        rid1 = h.runner.state.resources["ModelRelease/r"].status.run_id
        assert rid1 is not None and served(f"http://127.0.0.1:{port}/v1") == "good"
        # the registered model is the release's name (no registeredModel in its spec)
        aliases_become(mlflow, "r", lambda found: found == {rid1: ["champion"]})

        # A bad new version: smoke-tested beside v1, rolled back. `champion` stays on v1, nobody is `challenger`.
        reload(h, write(tmp_path / "m", port, "garbage", 96))
        eventually(lambda: stepped_until(RolloutState.ROLLED_BACK, rid1), timeout=60, interval=0.2)
        rid2 = h.runner.state.resources["ModelRelease/r"].status.run_id
        assert rid2 not in (None, rid1)

        def rolled_back(found: dict[str, list[str]]) -> bool:
            return found.get(rid1) == ["champion"] and all(v == [] for k, v in found.items() if k != rid1)

        eventually(lambda: h.runner.step() or not backend.pending(), timeout=60, interval=0.2)
        aliases_become(mlflow, "r", rolled_back)

        # A good new version: promoted. `champion` moves to it; v1 has no alias; nobody is `challenger`.
        reload(h, write(tmp_path / "m", port, "good", 128))
        eventually(lambda: stepped_until(RolloutState.PROMOTED, rid1), timeout=60, interval=0.2)
        rid3 = h.runner.state.resources["ModelRelease/r"].status.run_id
        assert rid3 not in (None, rid1, rid2)

        def promoted(found: dict[str, list[str]]) -> bool:
            return found.get(rid3) == ["champion"] and all(v == [] for k, v in found.items() if k != rid3)

        eventually(lambda: h.runner.step() or not backend.pending(), timeout=60, interval=0.2)
        aliases_become(mlflow, "r", promoted)
        assert rid1 in by_run(mlflow.query("model", name="r")) and backend.failures == 0
    finally:
        h.runner.stop()
        backend.close()


class _Kube:
    """Stands in for the Kubernetes client: the handler's writes succeed and are kept."""

    def __init__(self) -> None:
        self.patched: list[dict[str, Any]] = []

    async def patch_status(self, api_version: str, kind: str, ns: str, name: str, patch: dict[str, Any]) -> None:
        self.patched.append(patch)

    async def apply(self, obj: dict[str, Any]) -> None: ...

    async def delete(self, *args: str) -> bool:
        return False

    async def create(self, obj: dict[str, Any]) -> None: ...


def test_the_operator_moves_the_aliases_of_each_release_it_reconciles(mlflow: MlflowServer, tmp_path: Path) -> None:
    register(mlflow, "op", "r-old", "r-new")
    kube = _Kube()
    settings = Settings(store=str(tmp_path / "store"), tracking_uri=mlflow.url)
    ctl = Controller(settings, cast(Any, kube), open_store(settings.store))
    ctl.indices = {"lmforge_children_jobs": {}, "lmforge_children_deployments": {}}
    rel = release("rel", "op")
    body = {
        **rel.model_dump(mode="json", by_alias=True, exclude_none=True),
        "metadata": {"name": "rel", "namespace": "ml", "uid": "u1", "generation": 1, "resourceVersion": "7"},
    }
    key = ("ml", "ModelRelease", "rel")
    assert ctl.aliases is not None
    try:
        asyncio.run(ctl._act(key, body, rel, Decision(status=status(RolloutState.SMOKE_TESTING, "SmokeTesting"))))
        aliases_become(mlflow, "op", lambda found: found == {"r-old": ["champion"], "r-new": ["challenger"]})
        asyncio.run(ctl._act(key, body, rel, Decision(status=status(RolloutState.PROMOTED, "Serving"))))
        aliases_become(mlflow, "op", lambda found: found == {"r-old": [], "r-new": ["champion"]})
        assert kube.patched  # the status was patched as before
    finally:
        ctl.aliases.close()
    without = Controller(Settings(store=str(tmp_path / "store")), cast(Any, kube), open_store(settings.store))
    assert without.aliases is None  # no tracking URI in the chart: the operator never calls MLflow
