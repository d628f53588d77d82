"""The progressive canary under the real operator on the control plane, with the Gateway API's CRDs
installed: a changed release is smoke-tested with no share of the Gateway's traffic, then its
HTTPRoute weights move 10 → 50 → promoted (one backend, the stable version's Deployment gone); a
later version that fails its smoke suite is rolled back and the route keeps only the stable backend.
No Prometheus is configured, so each step passes on time alone (`stepSeconds` 5) and says so.
kwok plays the serving pods; the stage Jobs are finished by hand as in the other operator tests."""

from __future__ import annotations

import time
from typing import Any

import pytest
import yaml

from lmforge.api.contract import StageName
from lmforge.operator.kube.meta import RUN_LABEL
from lmforge.operator.reconcile.canary import NO_METRICS

from .controlplane import ControlPlane, eventually
from .gateway_api import gateway_api_crds
from .operator_harness import (
    condition,
    finish_job,
    get,
    jobs,
    publish_result,
    resource,
    running_operator,
    stage_output,
)

API = "lmforge.io/v1alpha1"
COMPRESS = "lmforge.io/modelrelease=chat,lmforge.io/component=stage"
SMOKE = "lmforge.io/evalsuite=smoke,lmforge.io/component=stage"


def release(kv_cache_gib: float) -> dict[str, Any]:
    """The release; changing `kv_cache_gib` makes a new version (a new run)."""
    return {
        "apiVersion": API,
        "kind": "ModelRelease",
        "metadata": {"name": "chat"},
        "spec": {
            "modelRef": {"uri": "s3://b/base"},
            "serving": {
                "replicas": 2,
                "kvCacheGib": kv_cache_gib,
                "smokeEvalSuiteRef": {"name": "smoke"},
                "gateway": {"name": "public"},
                "canary": {"steps": [10, 50], "stepSeconds": 5},
            },
        },
    }


SUITE = {
    "apiVersion": API,
    "kind": "EvalSuite",
    "metadata": {"name": "smoke"},
    "spec": {
        "endpoint": {"releaseRef": {"name": "chat"}},
        "tasks": [{"name": "smoke", "type": "generation", "dataUri": "s3://b/smoke.jsonl"}],
        "thresholds": ["smoke.exact_match >= 1"],
    },
}


@pytest.fixture(scope="module")
def gateway_crds(control_plane: ControlPlane) -> ControlPlane:
    for path in gateway_api_crds():
        control_plane.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))

    def established() -> bool:
        _, body = control_plane.request(
            "GET", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/httproutes.gateway.networking.k8s.io"
        )
        conditions = body.get("status", {}).get("conditions", []) if isinstance(body, dict) else []
        return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)

    eventually(established, timeout=60, what="the HTTPRoute CRD Established")
    return control_plane


def test_a_canary_moves_the_httproute_weights_then_promotes_and_a_failed_smoke_test_rolls_back(
    gateway_crds: ControlPlane, namespace: str
) -> None:
    cp, ns = gateway_crds, namespace
    with running_operator(cp, ns) as op:
        done: set[str] = set()

        def finish_new_job(
            selector: str, stage: StageName, artifacts: dict[str, str], metrics: dict[str, float]
        ) -> str:
            """Finish the one Job matching `selector` not finished before; its name."""

            def fresh() -> list[dict[str, Any]] | None:
                found = [j for j in jobs(cp, ns, selector) if j["metadata"]["name"] not in done]
                return found if len(found) == 1 else None

            (job,) = eventually(fresh, timeout=90, what=f"a new Job with {selector}", abort=op.dead)
            publish_result(op.store, stage_output(cp, ns, job), stage, artifacts, metrics)
            finish_job(cp, op, ns, job)
            done.add(job["metadata"]["name"])
            return str(job["metadata"]["name"])

        def finish_suite_on(url: str, score: float) -> None:
            """Finish the smoke suite's Job that evaluates `url` (its spec's release endpoint)."""

            def evaluating() -> list[dict[str, Any]] | None:
                found = []
                for job in jobs(cp, ns, SMOKE):
                    cm = get(cp, f"/api/v1/namespaces/{ns}/configmaps/{job['metadata']['name']}-spec")
                    spec = yaml.safe_load(cm["data"]["spec.yaml"]) if cm else {}
                    inputs = (spec or {}).get("inputs") or {}
                    if (inputs.get("ModelRelease/chat") or {}).get("artifacts", {}).get("endpoint") == url:
                        found.append(job)
                return found or None

            (job,) = eventually(evaluating, timeout=90, what=f"the smoke Job evaluating {url}", abort=op.dead)
            publish_result(op.store, stage_output(cp, ns, job), StageName.EVALUATE, {}, {"smoke.exact_match": score})
            finish_job(cp, op, ns, job)

        def route() -> dict[str, int]:
            obj = get(cp, f"/apis/gateway.networking.k8s.io/v1/namespaces/{ns}/httproutes/chat")
            if not obj:
                return {}
            return {b["name"]: b["weight"] for b in obj["spec"]["rules"][0]["backendRefs"]}

        def route_is(want: dict[str, int]) -> dict[str, int] | None:
            return want if route() == want else None

        def run_url(run: str) -> str:
            return f"http://{run}.{ns}.svc:8000/v1"

        def deployments() -> dict[str, int]:
            items = cp.kubectl_json(
                "get", "deployments", f"--namespace={ns}", "--selector=lmforge.io/modelrelease=chat"
            )
            return {d["metadata"]["name"]: d["spec"]["replicas"] for d in items["items"]}

        def status() -> dict[str, Any]:
            return dict((resource(cp, ns, "modelreleases", "chat") or {}).get("status") or {})

        def pinned() -> str | None:
            """The run the release's Service selects alone (its run label), None if every version."""
            svc = get(cp, f"/api/v1/namespaces/{ns}/services/chat") or {}
            return ((svc.get("spec") or {}).get("selector") or {}).get(RUN_LABEL)

        def pinned_to(run: str | None) -> bool:
            return pinned() == run

        def serving_run() -> str | None:
            st = status()
            ready = condition({"status": st}, "Ready")
            ok = ready is not None and ready["status"] == "True" and ready["reason"] == "Serving"
            deps = deployments()
            return next(iter(deps)) if ok and len(deps) == 1 else None

        # The first version serves at once and its route has one backend.
        cp.apply(SUITE, release(1.0), namespace=ns)
        finish_new_job(COMPRESS, StageName.COMPRESS, {"model": "s3://b/cm1"}, {})
        v1 = eventually(serving_run, timeout=120, what="the first version serving", abort=op.dead)
        eventually(lambda: route_is({v1: 100}), timeout=30, what="the route to v1 alone", abort=op.dead)

        # A new version: smoke-tested at weight 0, then 10 % → 50 % → promoted.
        cp.apply(release(2.0), namespace=ns)
        finish_new_job(COMPRESS, StageName.COMPRESS, {"model": "s3://b/cm2"}, {})

        def v2_at(weight: int) -> str | None:
            r = route()
            others = [n for n in r if n != v1]
            return others[0] if len(r) == 2 and r.get(v1) == 100 - weight and r[others[0]] == weight else None

        v2 = eventually(lambda: v2_at(0), timeout=120, what="v2 smoke-tested at weight 0", abort=op.dead)
        st = status()
        assert st["rollout"]["state"] == "SmokeTesting" and st["rollout"]["candidateEndpoint"] == run_url(v2)
        # Nor does v2 get any request through the release's own Service while it is smoke-tested.
        eventually(lambda: pinned_to(v1), timeout=30, what="the release Service on v1 alone", abort=op.dead)
        finish_suite_on(run_url(v2), 1.0)  # the smoke suite evaluates v2's own Service, not the release's
        started = time.monotonic()
        eventually(lambda: v2_at(10), timeout=60, what="v2 at 10 %", abort=op.dead)
        st = status()
        ready = condition({"status": st}, "Ready")
        assert st["rollout"]["state"] == "Canary" and st["rollout"]["weight"] == 10
        assert ready is not None and ready["status"] == "True" and ready["reason"] == "Canary"
        assert "serves 10%" in ready["message"] and "serves 90%" in ready["message"]
        assert deployments() == {v1: 2, v2: 2}  # weights split traffic through the Gateway, not replicas
        eventually(lambda: pinned_to(None), timeout=30, what="the release Service on both", abort=op.dead)
        eventually(lambda: v2_at(50), timeout=60, what="v2 at 50 %", abort=op.dead)
        eventually(lambda: route_is({v2: 100}), timeout=60, what="v2 promoted, alone on the route", abort=op.dead)
        promoted_s = time.monotonic() - started
        assert eventually(serving_run, timeout=60, what="v2 serving alone", abort=op.dead) == v2
        st = status()
        assert st["rollout"]["state"] == "Promoted" and NO_METRICS in st["rollout"]["message"]
        # Two steps of stepSeconds 5 each, timed on whole seconds (stepStarted is RFC 3339 to the second).
        assert promoted_s >= 8, promoted_s
        print(f"canary: 10 % -> promoted in {promoted_s:.1f} s (2 steps x 5 s)")

        # A version failing its smoke suite: rolled back, the route keeps only the stable backend.
        cp.apply(release(3.0), namespace=ns)
        finish_new_job(COMPRESS, StageName.COMPRESS, {"model": "s3://b/cm3"}, {})
        r3 = eventually(
            lambda: (lambda r: r if len(r) == 2 and r.get(v2) == 100 else None)(route()),
            timeout=120,
            what="v3 smoke-tested at weight 0",
            abort=op.dead,
        )
        (v3,) = [n for n in r3 if n != v2]
        assert r3[v3] == 0
        eventually(lambda: pinned_to(v2), timeout=30, what="the release Service on v2 alone", abort=op.dead)
        failed_at = time.monotonic()
        finish_suite_on(run_url(v3), 0.0)
        eventually(lambda: route_is({v2: 100}), timeout=60, what="the route back to v2 alone", abort=op.dead)
        print(f"canary: smoke failure -> route back to the stable alone in {time.monotonic() - failed_at:.1f} s")
        st = eventually(
            lambda: (lambda s: s if (s.get("rollout") or {}).get("state") == "RolledBack" else None)(status()),
            timeout=60,
            what="v3 rolled back",
            abort=op.dead,
        )
        ready = condition({"status": st}, "Ready")
        assert ready is not None and ready["status"] == "True" and ready["reason"] == "RolledBack"
        assert "failed its smoke evaluation" in ready["message"]
        assert eventually(
            lambda: (lambda d: d if list(d) == [v2] else None)(deployments()),
            timeout=60,
            what="v3's Deployment gone",
            abort=op.dead,
        ) == {v2: 2}
        assert pinned() in (v2, None)  # never the rolled-back v3
        events = cp.kubectl_json("get", "events", f"--namespace={ns}", "--field-selector=involvedObject.name=chat")
        reasons = [e["reason"] for e in events["items"]]
        assert {"SmokeTesting", "CanaryStep", "Promoted", "RolledBack"} <= set(reasons), reasons

        # `serving.gateway` removed: the release's HTTPRoute goes (it would route to versions gone).
        ungated = release(4.0)
        del ungated["spec"]["serving"]["gateway"]
        cp.apply(ungated, namespace=ns)
        finish_new_job(COMPRESS, StageName.COMPRESS, {"model": "s3://b/cm4"}, {})
        eventually(lambda: route_absent(cp, ns), timeout=90, what="the HTTPRoute deleted", abort=op.dead)


def test_by_replica_ratio_the_stable_gives_way_pod_by_pod_then_the_canary_takes_all(
    gateway_crds: ControlPlane, namespace: str
) -> None:
    """No Gateway: the shares are replicas behind the release's Service. 4 replicas: 10 % is 1 canary
    pod beside 3 stable ones, 50 % is 2 and 2, promoted the canary runs all 4."""
    cp, ns = gateway_crds, namespace

    def spec(kv: float) -> dict[str, Any]:
        out = release(kv)
        serving = out["spec"]["serving"]
        del serving["gateway"], serving["smokeEvalSuiteRef"]
        serving["replicas"] = 4
        return out

    with running_operator(cp, ns) as op:
        done: set[str] = set()

        def compress(model: str) -> None:
            def fresh() -> list[dict[str, Any]] | None:
                found = [j for j in jobs(cp, ns, COMPRESS) if j["metadata"]["name"] not in done]
                return found if len(found) == 1 else None

            (job,) = eventually(fresh, timeout=90, what="a new compress Job", abort=op.dead)
            publish_result(op.store, stage_output(cp, ns, job), StageName.COMPRESS, {"model": model})
            finish_job(cp, op, ns, job)
            done.add(job["metadata"]["name"])

        def deployments() -> dict[str, int]:
            items = cp.kubectl_json(
                "get", "deployments", f"--namespace={ns}", "--selector=lmforge.io/modelrelease=chat"
            )
            return {d["metadata"]["name"]: d["spec"]["replicas"] for d in items["items"]}

        def split(want_new: int, want_old: int, old: str) -> str | None:
            deps = deployments()
            new = [n for n in deps if n != old]
            return new[0] if len(deps) == 2 and deps[old] == want_old and deps[new[0]] == want_new else None

        cp.apply(spec(1.0), namespace=ns)
        compress("s3://b/cm1")
        (v1,) = eventually(
            lambda: (lambda d: d if list(d.values()) == [4] else None)(deployments()), timeout=120, what="v1 at 4"
        )
        ready = eventually(
            lambda: (lambda c: c if c and c["reason"] == "Serving" else None)(
                condition(resource(cp, ns, "modelreleases", "chat"), "Ready")
            ),
            timeout=90,
            what="v1 serving",
            abort=op.dead,
        )
        assert ready["status"] == "True"
        cp.apply(spec(2.0), namespace=ns)
        compress("s3://b/cm2")
        v2 = eventually(lambda: split(1, 3, v1), timeout=120, what="10 %: 1 canary pod, 3 stable", abort=op.dead)
        assert route_absent(cp, ns)
        eventually(lambda: split(2, 2, v1), timeout=60, what="50 %: 2 and 2", abort=op.dead)
        eventually(
            lambda: (lambda d: d if d == {v2: 4} else None)(deployments()),
            timeout=60,
            what="promoted: the canary at 4, the stable gone",
            abort=op.dead,
        )
        st = eventually(
            lambda: (lambda o: o if condition(o, "Ready") and condition(o, "Ready")["reason"] == "Serving" else None)(
                resource(cp, ns, "modelreleases", "chat")
            ),
            timeout=60,
            what="v2 serving",
            abort=op.dead,
        )
        assert st["status"]["rollout"]["state"] == "Promoted"


def route_absent(cp: ControlPlane, ns: str) -> bool:
    return get(cp, f"/apis/gateway.networking.k8s.io/v1/namespaces/{ns}/httproutes/chat") is None
