"""The NetworkPolicies of stage runs as named table cases: StageRun in, NetworkPolicy out, no cluster.

What each case pins: stage pods reach DNS, the store and their own run's pods (plus what their spec
names), and accept traffic only from their own run's pods and on the metrics port; serving pods accept
traffic only on their port. No case lets a stage pod reach another run's pods."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from lmforge.api.contract import InputArtifacts
from lmforge.operator.kube import build_children
from lmforge.operator.kube.meta import RUN_LABEL
from lmforge.operator.reconcile import StageRun
from lmforge.operator.settings import Settings

from .conftest import SETTINGS, first_run, owner, parse, pipeline

PIPE = pipeline()
ON = replace(SETTINGS, network_policies=True)  # endpoint http://s3.example:8333
DNS = {"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}


def _policy(run: StageRun, settings: Settings = ON) -> dict[str, Any]:
    [np] = [o for o in build_children(run, owner(PIPE["Dataset/web-corpus"]), settings) if o["kind"] == "NetworkPolicy"]
    return np


def _own(run: StageRun) -> dict[str, Any]:
    return {"podSelector": {"matchLabels": {RUN_LABEL: run.name}}}


def _tcp(port: int, to: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    rule: dict[str, Any] = {"ports": [{"protocol": "TCP", "port": port}]}
    if to is not None:
        rule["to"] = to
    return rule


def _suite(endpoint: dict[str, Any]) -> StageRun:
    return first_run(
        parse(
            {
                "apiVersion": "lmforge.io/v1alpha1",
                "kind": "EvalSuite",
                "metadata": {"name": "e"},
                "spec": {
                    "endpoint": endpoint,
                    "tasks": [{"name": "mc", "type": "multipleChoice", "dataUri": "s3://b/x"}],
                },
            }
        )
    )


def _serve_run() -> StageRun:
    compress = first_run(PIPE["ModelRelease/chat-1b"])
    return replace(compress, long_running=True, port=8000, name=compress.name.replace("compress", "serve"))


def _release_eval() -> StageRun:
    run = _suite({"releaseRef": {"name": "chat-1b"}})
    inputs = {
        "ModelRelease/chat-1b": InputArtifacts(
            kind="ModelRelease", name="chat-1b", artifacts={"endpoint": "http://chat-1b.ml.svc:8000/v1"}
        )
    }
    return replace(run, spec=run.spec.model_copy(update={"inputs": inputs}))


@dataclass
class Case:
    name: str
    run: StageRun
    egress: list[dict[str, Any]]
    """Egress rules besides DNS (always first) and the run's own pods (always last for a stage)."""
    ingress_ports: list[int]
    """Ports open to any source (besides the run's own pods, for a stage)."""
    settings: Settings = ON
    serving: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


CASES = [
    Case("dataset-reaches-dns-the-store-and-its-peers", first_run(PIPE["Dataset/web-corpus"]), [_tcp(8333)], [9400]),
    Case(
        "store-address-literal-is-pinned",
        first_run(PIPE["Dataset/web-corpus"]),
        [_tcp(9000, [{"ipBlock": {"cidr": "10.1.2.3/32"}}])],
        [9400],
        settings=replace(ON, s3_endpoint="http://10.1.2.3:9000"),
    ),
    Case(
        "store-peers-from-the-chart",
        first_run(PIPE["Dataset/web-corpus"]),
        [_tcp(8333, [{"namespaceSelector": {"matchLabels": {"name": "minio"}}}])],
        [9400],
        settings=replace(ON, network_store_peers=({"namespaceSelector": {"matchLabels": {"name": "minio"}}},)),
    ),
    Case(
        "aws-s3-is-https",
        first_run(PIPE["Dataset/web-corpus"]),
        [_tcp(443)],
        [9400],
        settings=replace(ON, s3_endpoint=None),
    ),
    Case(
        "file-store-needs-no-rule",
        first_run(PIPE["Dataset/web-corpus"]),
        [],
        [],
        settings=replace(ON, s3_endpoint=None, store="file:///mnt/store", stage_metrics_port=0),
    ),
    Case("pretrain-peers-and-metrics-port", first_run(PIPE["PretrainJob/base-1b"]), [_tcp(8333)], [9400]),
    Case(
        "tracking-server-is-reachable",
        first_run(PIPE["Dataset/web-corpus"]),
        [_tcp(8333), _tcp(5000)],
        [9400],
        settings=replace(ON, tracking_uri="http://mlflow.mlflow:5000"),
    ),
    Case(
        "evaluated-url-is-reachable-on-its-port",
        _suite({"url": "https://api.example.com/v1"}),
        [_tcp(8333), _tcp(443)],
        [9400],
    ),
    Case(
        "evaluated-address-literal-is-pinned",
        _suite({"url": "http://192.168.7.9:8000/v1"}),
        [_tcp(8333), _tcp(8000, [{"ipBlock": {"cidr": "192.168.7.9/32"}}])],
        [9400],
    ),
    Case(
        "evaluated-release-is-its-serving-pods",
        _release_eval(),
        [
            _tcp(8333),
            {
                "to": [
                    {
                        "podSelector": {
                            "matchLabels": {"lmforge.io/modelrelease": "chat-1b", "lmforge.io/component": "serve"}
                        }
                    }
                ],
                "ports": [{"protocol": "TCP", "port": 8000}],
            },
        ],
        [9400],
    ),
    Case(
        "extra-egress-from-the-chart",
        first_run(PIPE["Dataset/web-corpus"]),
        [_tcp(8333), {"to": [{"ipBlock": {"cidr": "10.9.0.0/16"}}]}],
        [9400],
        settings=replace(ON, network_extra_egress=({"to": [{"ipBlock": {"cidr": "10.9.0.0/16"}}]},)),
    ),
    Case("serving-accepts-its-port-only", _serve_run(), [_tcp(8333)], [8000], serving=True),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_network_policy(case: Case) -> None:
    np = _policy(case.run, case.settings)
    spec = np["spec"]
    assert np["apiVersion"] == "networking.k8s.io/v1" and np["metadata"]["name"] == case.run.name
    assert np["metadata"]["ownerReferences"][0]["kind"] == "Dataset"  # garbage-collected with its resource
    assert spec["podSelector"] == {"matchLabels": {RUN_LABEL: case.run.name}}
    assert spec["policyTypes"] == ["Ingress", "Egress"]  # both denied unless listed
    egress = spec["egress"]
    assert egress[0] == DNS
    extra = [r for r in egress[1:] if r != {"to": [_own(case.run)]}]
    if "extra-egress" in case.name:  # the chart's rules come last, after the run's own pods
        assert egress[-1] == case.egress[-1] and egress[-2] == {"to": [_own(case.run)]}
        extra = [*extra[:-1], egress[-1]]
    assert extra == case.egress
    open_ports = [p["port"] for r in spec["ingress"] if "from" not in r for p in r["ports"]]
    assert open_ports == case.ingress_ports
    if case.serving:
        assert {"to": [_own(case.run)]} not in egress and all("from" not in r for r in spec["ingress"])
    else:
        assert {"to": [_own(case.run)]} in egress and {"from": [_own(case.run)]} in spec["ingress"]
    for rule in egress + spec["ingress"]:  # never another run's pods, never "everything on every port"
        assert rule.get("ports") or rule.get("to") or rule.get("from"), rule
        for peer in rule.get("to", []) + rule.get("from", []):
            selector = peer.get("podSelector", {}).get("matchLabels", {})
            assert selector.get(RUN_LABEL, case.run.name) == case.run.name


def test_no_network_policy_unless_configured() -> None:
    run = first_run(PIPE["Dataset/web-corpus"])
    assert "NetworkPolicy" not in [o["kind"] for o in build_children(run, owner(PIPE["Dataset/web-corpus"]), SETTINGS)]
    kinds = [o["kind"] for o in build_children(run, owner(PIPE["Dataset/web-corpus"]), ON)]
    assert kinds.index("NetworkPolicy") < kinds.index("Job")  # in place before the pods it confines


def test_settings_read_the_network_options() -> None:
    s = Settings.from_env(
        {
            "LMFORGE_NETWORK_POLICIES": "true",
            "LMFORGE_NETWORK_EXTRA_EGRESS": '[{"ports": [{"port": 5432}]}]',
            "LMFORGE_NETWORK_STORE_PEERS": '[{"ipBlock": {"cidr": "10.0.0.0/8"}}]',
        }
    )
    assert s.network_policies and s.network_extra_egress == ({"ports": [{"port": 5432}]},)
    assert s.network_store_peers == ({"ipBlock": {"cidr": "10.0.0.0/8"}},)
    assert not Settings.from_env({}).network_policies
