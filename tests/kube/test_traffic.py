"""How the operator carries out a canary's shares (kube/traffic.py), as table cases: replicas by
ratio behind the release's Service, or weights in the release's HTTPRoute."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from lmforge.api.release import GatewayRef
from lmforge.operator.kube.meta import RUN_LABEL, SPEC_HASH, Owner
from lmforge.operator.kube.traffic import http_route, replicas, run_service, run_url, service_pin
from lmforge.operator.settings import Settings

OWNER = Owner("ModelRelease", "chat", "ml", "uid-1", (("team", "nlp"),))


@dataclass(frozen=True)
class Split:
    name: str
    full: int
    weight: int
    canary: int
    stable: int


SPLITS = [
    Split("ten-percent-of-ten-replicas", 10, 10, 1, 9),
    Split("half-of-four", 4, 50, 2, 2),
    Split("ten-percent-of-four-rounds-the-canary-up", 4, 10, 1, 3),
    Split("one-replica-each-cannot-be-finer-than-half", 1, 10, 1, 1),
    Split("ninety-percent-keeps-one-stable-replica", 4, 90, 4, 1),
    Split("three-at-fifty-rounds-the-canary-up", 3, 50, 2, 1),
]


@pytest.mark.parametrize("s", SPLITS, ids=[s.name for s in SPLITS])
def test_replica_ratio(s: Split) -> None:
    assert replicas(s.full, s.weight, new=True, weighted=False) == s.canary
    assert replicas(s.full, 100 - s.weight, new=False, weighted=False) == s.stable


@pytest.mark.parametrize("share", [None, 0, 100, 10, 50])
def test_full_replicas_with_a_gateway_with_no_split_or_a_whole_share(share: int | None) -> None:
    """Weights split traffic through a Gateway; without a split (or at 0 / 100 %) nobody is scaled."""
    assert replicas(4, share, new=True, weighted=True) == 4
    if share in (None, 0, 100):
        assert replicas(4, share, new=False, weighted=False) == 4


PINS = [
    ("a-new-version-smoke-tested-gets-nothing-through-the-service", {"stable": 100, "new": 0}, "stable"),
    ("after-a-rollback-the-stable-alone", {"stable": 100}, "stable"),
    ("promoted-the-new-alone", {"new": 100}, "new"),
    ("a-canary-step-selects-both", {"stable": 90, "new": 10}, None),
    ("no-split-decided-selects-every-pod", {}, None),
]


@pytest.mark.parametrize(("shares", "pinned"), [c[1:] for c in PINS], ids=[c[0] for c in PINS])
def test_which_run_the_release_service_selects_alone(shares: dict[str, int], pinned: str | None) -> None:
    assert service_pin(shares) == pinned


def test_the_run_service_selects_one_run_and_its_url() -> None:
    svc = run_service("chat-serve-abc123", 8000, OWNER)
    assert svc["metadata"]["name"] == "chat-serve-abc123"
    assert svc["spec"]["selector"] == {"lmforge.io/modelrelease": "chat", RUN_LABEL: "chat-serve-abc123"}
    assert svc["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert run_url(OWNER, "chat-serve-abc123", 8000) == "http://chat-serve-abc123.ml.svc:8000/v1"


def test_the_httproute_weights_the_versions_run_services() -> None:
    gw = GatewayRef(name="public", namespace="gateways", section_name="https")
    route = http_route(OWNER, gw, {"chat-serve-old000": 90, "chat-serve-new000": 10}, 8000)
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1" and route["kind"] == "HTTPRoute"
    assert route["metadata"]["name"] == "chat" and route["metadata"]["namespace"] == "ml"
    assert route["metadata"]["ownerReferences"][0]["uid"] == "uid-1" and SPEC_HASH in route["metadata"]["annotations"]
    assert route["spec"]["parentRefs"] == [
        {
            "group": "gateway.networking.k8s.io",
            "kind": "Gateway",
            "name": "public",
            "namespace": "gateways",
            "sectionName": "https",
        }
    ]
    (rule,) = route["spec"]["rules"]
    assert {(b["name"], b["weight"], b["port"], b["kind"]) for b in rule["backendRefs"]} == {
        ("chat-serve-old000", 90, 8000, "Service"),
        ("chat-serve-new000", 10, 8000, "Service"),
    }
    single = http_route(OWNER, GatewayRef(name="public"), {"chat-serve-new000": 100}, 8000)
    assert single["spec"]["parentRefs"] == [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "public"}]
    assert [b["name"] for b in single["spec"]["rules"][0]["backendRefs"]] == ["chat-serve-new000"]
    assert single["metadata"]["annotations"][SPEC_HASH] != route["metadata"]["annotations"][SPEC_HASH]


def test_the_prometheus_url_setting() -> None:
    assert Settings.from_env({"LMFORGE_PROMETHEUS_URL": "http://prom:9090"}).prometheus_url == "http://prom:9090"
    assert Settings.from_env({}).prometheus_url is None
