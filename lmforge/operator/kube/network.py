"""The NetworkPolicy of a stage run: what its pods may reach and what may reach them. Pure, like the
other builders; table-tested in tests/kube/test_network.py.

Why per run and not one static policy in the chart: a run's pods may talk to each other (torch
rendezvous, NCCL/gloo between ranks) but not to another run's, and which outside endpoints a stage
needs (the evaluated server, an HTTP data source) follows from its spec.

* Stage pods: egress to DNS (port 53), the store (the port of `LMFORGE_S3_ENDPOINT`, else 443 for
  AWS S3), the tracking server, the `http(s)://` addresses and `hf://` sources their resource names
  (a port each; an address literal is also pinned as an `ipBlock`), the serving pods of a release an
  EvalSuite evaluates, and their own run's pods; ingress only from their own run's pods, and on the
  Prometheus exporter's port.
* Serving pods: ingress only on the serving port; egress to DNS and the store (the model download).

A hostname is allowed by port only (a NetworkPolicy cannot name hosts): narrow the store's
destinations with `LMFORGE_NETWORK_STORE_PEERS` (the chart's `networkPolicy.storeTo`). Nothing here
is enforced without a CNI that implements NetworkPolicy.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from lmforge.api.contract import StageName
from lmforge.operator.kube.meta import RUN_LABEL, Owner, metadata, stamp
from lmforge.operator.kube.pods import metrics_port
from lmforge.operator.reconcile.types import StageRun
from lmforge.operator.settings import Settings

DNS_PORTS = [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]
HF_HUB_PORT = 443
_DEFAULT_PORTS = {"http": 80, "https": 443, "s3": 443}


def _address(url: str) -> tuple[str | None, int | None]:
    """(host, port) of a URL, the port defaulted by scheme; (None, None) when it has none."""
    try:
        parts = urlsplit(url)
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
    except ValueError:
        return None, None
    return parts.hostname, port


def _to(host: str | None) -> list[dict[str, Any]] | None:
    """`to` of a rule reaching `host`: an ipBlock for an address literal, else None (any address:
    NetworkPolicy has no host names)."""
    try:
        ip = ipaddress.ip_address(host or "")
    except ValueError:
        return None
    return [{"ipBlock": {"cidr": f"{ip}/{ip.max_prefixlen}"}}]


def _rule(host: str | None, port: int, to: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    rule: dict[str, Any] = {"ports": [{"protocol": "TCP", "port": port}]}
    peers = to if to is not None else _to(host)
    if peers is not None:
        rule["to"] = peers
    return rule


def _urls(value: Any) -> Iterator[str]:
    """Every `http(s)://` or `hf://` string in a manifest (sources, endpoints, model URIs)."""
    if isinstance(value, str):
        if value.startswith(("http://", "https://", "hf://")):
            yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _urls(v)
    elif isinstance(value, list):
        for v in value:
            yield from _urls(v)


def store_egress(settings: Settings) -> list[dict[str, Any]]:
    """The rule that reaches the artifact store (none for a `file://` store: a mounted volume)."""
    if settings.s3_endpoint:
        host, port = _address(settings.s3_endpoint)
    elif settings.store.startswith("s3://"):
        host, port = None, 443  # AWS S3: HTTPS to addresses no policy can list
    else:
        return []
    if port is None:
        return []
    return [_rule(host, port, list(settings.network_store_peers) if settings.network_store_peers else None)]


def _named_egress(run: StageRun, settings: Settings) -> list[dict[str, Any]]:
    """Rules for what the run's own spec (and the tracking setting) names."""
    out: list[dict[str, Any]] = []
    urls = list(_urls(run.spec.resource.get("spec", {})))
    if settings.tracking_uri:
        urls.append(settings.tracking_uri)
    for url in urls:
        if url.startswith("hf://"):
            rule = _rule(None, HF_HUB_PORT)
        else:
            host, port = _address(url)
            if port is None:
                continue
            rule = _rule(host, port)
        if rule not in out:
            out.append(rule)
    if run.stage is StageName.EVALUATE:  # a release's endpoint: its serving pods, behind its Service
        for key, inp in run.spec.inputs.items():
            endpoint = inp.artifacts.get("endpoint")
            if key.startswith("ModelRelease/") and endpoint:
                _host, port = _address(endpoint)
                if port is not None:
                    selector = {"lmforge.io/modelrelease": inp.name, "lmforge.io/component": "serve"}
                    out.append(
                        {
                            "to": [{"podSelector": {"matchLabels": selector}}],
                            "ports": [{"protocol": "TCP", "port": port}],
                        }
                    )
    return out


def network_policy(run: StageRun, owner: Owner, settings: Settings) -> dict[str, Any]:
    """The run's NetworkPolicy, named after the run and selecting its pods by the run label."""
    own = {"podSelector": {"matchLabels": {RUN_LABEL: run.name}}}
    egress: list[dict[str, Any]] = [{"ports": DNS_PORTS}, *store_egress(settings)]
    if run.long_running:
        ingress: list[dict[str, Any]] = [{"ports": [{"protocol": "TCP", "port": run.port or 8000}]}]
    else:
        egress += [*_named_egress(run, settings), {"to": [own]}]
        ingress = [{"from": [own]}]
        port = metrics_port(run, settings)
        if port:
            ingress.append({"ports": [{"protocol": "TCP", "port": port}]})
    egress += [dict(rule) for rule in settings.network_extra_egress]
    component = "serve" if run.long_running else "stage"
    return stamp(
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": metadata(owner, run.name, run.name, component),
            "spec": {
                "podSelector": {"matchLabels": {RUN_LABEL: run.name}},
                "policyTypes": ["Ingress", "Egress"],
                "ingress": ingress,
                "egress": egress,
            },
        }
    )
