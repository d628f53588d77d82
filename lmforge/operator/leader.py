"""Leader election on a `coordination.k8s.io/v1` Lease, so that several operator replicas can run
with exactly one reconciling.

Why not kopf's peering: it pauses kopf's own watch streams only, while LMForge's controller also
runs its work queue, requeue timers and store polling; a paused replica would keep acting on what
it had queued. And it needs kopf's peering CRDs. A Lease is what controller-runtime operators
(Kubeflow Trainer, KubeRay) use, and what `kubectl get lease` shows users: a standby replica does
nothing until it holds the Lease, and a leader that cannot renew it stops the process at once (the
Deployment restarts it as a standby), so two replicas never reconcile at the same time for longer
than the API server's clock lets a stale renewal through.

`decide` is the pure rule (table-tested); `LeaderElector` does the calls.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any

from lmforge.operator.kube.client import ApiError, KubeClient

log = logging.getLogger(__name__)

LEASE_API = "/apis/coordination.k8s.io/v1"
MICRO = "%Y-%m-%dT%H:%M:%S.%fZ"


class Action(Enum):
    CREATE = "create"
    """No Lease yet: create it holding it."""
    TAKE = "take"
    """Held by nobody, or by someone whose renewal has expired: take it over."""
    RENEW = "renew"
    """We hold it: renew it."""
    WAIT = "wait"
    """Someone else holds it and is renewing: stand by."""


@dataclass(frozen=True)
class Decision:
    action: Action
    holder: str | None = None
    wait_s: float = 0.0


def _parse(ts: str | None) -> datetime | None:
    if not ts:
        return None
    for fmt in (MICRO, "%Y-%m-%dT%H:%M:%SZ"):
        try:
            return datetime.strptime(ts, fmt).replace(tzinfo=UTC)
        except ValueError:
            continue
    return None


def decide(lease: dict[str, Any] | None, me: str, now: datetime) -> Decision:
    """What `me` does with the Lease as read now."""
    if lease is None:
        return Decision(Action.CREATE)
    spec = lease.get("spec") or {}
    holder = spec.get("holderIdentity") or None
    if holder == me:
        return Decision(Action.RENEW, holder)
    renewed = _parse(spec.get("renewTime")) or _parse(spec.get("acquireTime"))
    duration = float(spec.get("leaseDurationSeconds") or 0)
    if holder is None or renewed is None:
        return Decision(Action.TAKE, holder)
    expires = renewed + timedelta(seconds=duration)
    if now >= expires:
        return Decision(Action.TAKE, holder)
    return Decision(Action.WAIT, holder, (expires - now).total_seconds())


def lease_body(
    name: str, namespace: str, me: str, now: datetime, duration_s: int, previous: dict[str, Any] | None, taken: bool
) -> dict[str, Any]:
    """The Lease to write: renewals keep `acquireTime`; a take-over counts a transition."""
    stamp = now.strftime(MICRO)
    spec_before = (previous or {}).get("spec") or {}
    transitions = int(spec_before.get("leaseTransitions") or 0) + (1 if taken and previous is not None else 0)
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if previous is not None:
        meta["resourceVersion"] = previous["metadata"]["resourceVersion"]  # optimistic concurrency
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": meta,
        "spec": {
            "holderIdentity": me,
            "leaseDurationSeconds": duration_s,
            "acquireTime": stamp if taken or previous is None else spec_before.get("acquireTime", stamp),
            "renewTime": stamp,
            "leaseTransitions": transitions,
        },
    }


class LeadershipLost(RuntimeError):
    """The Lease could not be renewed before it expired (or another replica holds it)."""


class LeaderElector:
    """Acquire, then hold, the Lease `namespace/name` as `identity`."""

    def __init__(
        self, client: KubeClient, namespace: str, name: str, identity: str, duration_s: int = 15, renew_s: float = 5.0
    ) -> None:
        self.client, self.namespace, self.name, self.identity = client, namespace, name, identity
        self.duration_s, self.renew_s = duration_s, renew_s
        self._held_until: datetime | None = None

    @property
    def path(self) -> str:
        return f"{LEASE_API}/namespaces/{self.namespace}/leases"

    async def _read(self) -> dict[str, Any] | None:
        found: dict[str, Any] | None = await self.client.request("GET", f"{self.path}/{self.name}", ok_missing=True)
        return found

    async def try_once(self) -> Decision:
        """One read-decide-write round; after it, `self.leader` says whether we hold the Lease."""
        now = datetime.now(UTC)
        lease = await self._read()
        decision = decide(lease, self.identity, now)
        if decision.action is Action.WAIT:
            self._held_until = None
            return decision
        body = lease_body(
            self.name,
            self.namespace,
            self.identity,
            now,
            self.duration_s,
            lease,
            taken=decision.action is not Action.RENEW,
        )
        try:
            if decision.action is Action.CREATE:
                await self.client.request("POST", self.path, body)
            else:
                await self.client.request("PUT", f"{self.path}/{self.name}", body)
        except ApiError as exc:  # 409: another replica wrote first; read again next round
            log.info("lease %s/%s: %s %s", self.namespace, self.name, decision.action.value, exc)
            self._held_until = None
            return Decision(Action.WAIT, decision.holder, self.renew_s)
        self._held_until = now + timedelta(seconds=self.duration_s)
        return decision

    @property
    def leader(self) -> bool:
        return self._held_until is not None and datetime.now(UTC) < self._held_until

    async def acquire(self) -> None:
        """Return once we hold the Lease (standby until then)."""
        announced = None
        while True:
            try:
                decision = await self.try_once()
            except ApiError as exc:
                log.warning("lease %s/%s unreadable: %s", self.namespace, self.name, exc)
                decision = Decision(Action.WAIT, None, self.renew_s)
            if self.leader:
                log.warning("leader: this replica (%s) holds lease %s/%s", self.identity, self.namespace, self.name)
                return
            if decision.holder != announced:
                announced = decision.holder
                log.warning("standby: lease %s/%s is held by %s", self.namespace, self.name, decision.holder)
            await asyncio.sleep(min(max(decision.wait_s, 0.5), self.renew_s))

    async def release(self) -> None:
        """Give the Lease up on a clean stop, so a standby takes over at once instead of after
        `duration_s` (best effort: an expired Lease is taken over anyway)."""
        if not self.leader:
            return
        try:
            lease = await self._read()
            if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
                return
            lease["spec"]["holderIdentity"] = None
            await self.client.request("PUT", f"{self.path}/{self.name}", lease)
        except ApiError as exc:
            log.warning("lease %s/%s not released: %s", self.namespace, self.name, exc)
        self._held_until = None

    async def hold(self) -> None:
        """Renew every `renew_s`; raise `LeadershipLost` once the Lease is lost or about to expire
        unrenewed (a margin of one renewal period before its expiry)."""
        while True:
            await asyncio.sleep(self.renew_s)
            try:
                decision = await self.try_once()
            except ApiError as exc:
                log.warning("lease %s/%s not renewed: %s", self.namespace, self.name, exc)
                decision = Decision(Action.WAIT, None)
            margin = timedelta(seconds=self.renew_s)
            if decision.action is Action.WAIT and decision.holder not in (None, self.identity):
                raise LeadershipLost(f"lease {self.namespace}/{self.name} is now held by {decision.holder}")
            if self._held_until is None or datetime.now(UTC) + margin >= self._held_until:
                raise LeadershipLost(f"lease {self.namespace}/{self.name} could not be renewed in time")
