"""How the operator splits a release's live traffic between its versions (`Decision.traffic`, the
pure reconciler's shares in percent). Pure builders, table-tested in tests/kube/test_traffic.py.

Two schemes, as a canary works without and with a Gateway:

* **Replica ratio** (no `serving.gateway`): the release's Service keeps selecting every serving pod
  of the release, so each pod takes an equal part of the connections; a version's share is set by
  its number of replicas. At canary weight `w` the new version runs `ceil(replicas * w / 100)`
  replicas (at least 1) and the stable one `floor(replicas * (100 - w) / 100)` (at least 1), each of
  its own `serving.replicas`: with the same count on both sides they add up to it. The share is
  therefore rounded to whole pods (1 replica each: 50 %). While only one version may take traffic (a
  new server being smoke-tested at weight 0, or a rollback or promotion giving one version all of
  it), the Service selects that version's pods alone (`service_pin`): a server not yet judged, or just
  judged bad, gets no request through it; changing a Service's selector restarts no pod. kube-proxy
  balances connections, not requests: long-lived keep-alive clients stick to one pod.
* **HTTPRoute weights** (`serving.gateway` names a Gateway): an HTTPRoute named after the release,
  attached to that Gateway, whose backendRefs are the versions' per-run Services weighted by their
  share (the new version at 0 while smoke-tested: no traffic at all); both versions keep all their
  replicas. After promotion or rollback one backend is left.

Every run also gets its own Service (`run_service`, named after the run, selecting its pods), so a
smoke suite, an HTTPRoute and Prometheus can address one version.
"""

from __future__ import annotations

import math
from typing import Any

from lmforge.api.release import GatewayRef
from lmforge.operator.kube.meta import RUN_LABEL, Owner, labels, metadata, stamp

FULL_REPLICAS = "lmforge.io/replicas"
"""Deployment annotation: the replicas its spec asks for (`serving.replicas`), so a stable version
scaled down for a canary can be given back its count after a rollback."""
GATEWAY_GROUP = "gateway.networking.k8s.io"
HTTPROUTE_API = f"{GATEWAY_GROUP}/v1"
ROUTE_ABSENT = "absent"
"""What the applied-hash cache holds for a release's HTTPRoute once it is known not to exist."""


def replicas(full: int, share: int | None, *, new: bool, weighted: bool) -> int:
    """Replicas of a serving Deployment whose spec asks for `full`, given its share of traffic
    (percent; None: no split decided). `new`: the version being rolled out (its count rounds up,
    the stable one's down). `weighted`: an HTTPRoute splits traffic, so replicas stay full."""
    if weighted or share is None or share <= 0 or share >= 100 or full <= 0:
        return full
    if new:
        return max(1, math.ceil(full * share / 100))
    return max(1, math.floor(full * share / 100))


def service_pin(shares: dict[str, int]) -> str | None:
    """The one run the release's Service must select alone, or None to select every version's pods.

    A run is pinned when it alone has a share and that share is all traffic: the stable version
    while the new one is smoke-tested (`{stable: 100, new: 0}`), or the one left after a rollback or
    promotion (`{run: 100}`). No split decided (`{}`), or two versions sharing: every pod."""
    live = [run for run, share in shares.items() if share > 0]
    if len(live) == 1 and shares[live[0]] >= 100:
        return live[0]
    return None


def run_url(owner: Owner, run: str, port: int) -> str:
    """The in-cluster URL of one run's servers (its own Service)."""
    return f"http://{run}.{owner.namespace}.svc:{port}/v1"


def run_service(run: str, port: int, owner: Owner) -> dict[str, Any]:
    """A Service selecting one run's serving pods: the address of one version."""
    meta = metadata(owner, run, run, "serve")
    return stamp(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": meta,
            "spec": {
                "selector": {owner.kind_label: owner.name, RUN_LABEL: run},
                "ports": [{"name": "http", "port": port, "targetPort": "http"}],
            },
        }
    )


def http_route(owner: Owner, gateway: GatewayRef, traffic: dict[str, int], port: int) -> dict[str, Any]:
    """The release's HTTPRoute: every request through `gateway` goes to a version's per-run Service
    with the probability of its weight (`traffic`: run name → percent). Named after the release,
    owned by it (garbage-collected with it)."""
    parent: dict[str, Any] = {"group": GATEWAY_GROUP, "kind": "Gateway", "name": gateway.name}
    if gateway.namespace:
        parent["namespace"] = gateway.namespace
    if gateway.section_name:
        parent["sectionName"] = gateway.section_name
    meta = metadata(owner, owner.name, None, "serve")
    meta["labels"] = labels(owner, None, "serve")
    backends = [
        {"group": "", "kind": "Service", "name": run, "port": port, "weight": weight}
        for run, weight in sorted(traffic.items())
    ]
    return stamp(
        {
            "apiVersion": HTTPROUTE_API,
            "kind": "HTTPRoute",
            "metadata": meta,
            "spec": {
                "parentRefs": [parent],
                "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}], "backendRefs": backends}],
            },
        }
    )
