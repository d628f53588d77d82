"""The few reads beyond the caches, each done only when it can change a decision: whether the
Secrets a new run mounts exist (GET by name: Secrets are never listed or watched), why a pending
run's pods do not run, and why a failed Job failed (pod LISTs by label). What they remember, to keep
them rare, lives in `ControllerCaches`."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from typing import Any

from lmforge.operator.caches import ControllerCaches, Key
from lmforge.operator.kube.client import ApiError, KubeClient
from lmforge.operator.kube.meta import RUN_LABEL, owned_by
from lmforge.operator.kube.observe import pod_failure_reason, pod_waiting_reason
from lmforge.operator.kube.secrets import missing, secret_needs
from lmforge.operator.reconcile import ObservedRun, StageRun
from lmforge.operator.settings import Settings

log = logging.getLogger("lmforge.operator")


class Lookups:
    """Reads through the operator's client, remembered in the controller's caches."""

    def __init__(self, client: KubeClient, settings: Settings, caches: ControllerCaches) -> None:
        self.client = client
        self.settings = settings
        self.caches = caches

    async def missing_secrets(self, ns: str, run: StageRun) -> tuple[str, ...]:
        """What of the Secrets `run` mounts is missing (GET by name; present ones are cached)."""
        needs = secret_needs(run, self.settings)
        found: dict[str, frozenset[str] | None] = {}
        for name in dict.fromkeys(n.name for n in needs):
            cached = self.caches.secret_keys(ns, name)
            if cached is not None:
                found[name] = cached
                continue
            try:
                secret = await self.client.get("v1", "Secret", ns, name)
            except ApiError as exc:  # e.g. a Role without `get secrets`: do not block on a guess
                log.warning("cannot check Secret %s/%s: %s", ns, name, exc)
                continue
            if secret is None:
                found[name] = None
                continue
            keys = frozenset((secret.get("data") or {}).keys())  # names only; values are never kept
            self.caches.record_secret(ns, name, keys)
            found[name] = keys
        return missing(needs, found)

    async def foreign_objects(self, objects: list[dict[str, Any]], uid: str) -> tuple[str, ...]:
        """Which of `objects` (a new run's children, about to be applied) already exist and are not
        owned by the resource `uid`, as `Kind name`. Server-side apply with force would silently take
        such an object over (and the garbage collector delete it with our resource)."""

        async def check(obj: dict[str, Any]) -> str | None:
            meta = obj["metadata"]
            try:
                found = await self.client.get(obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"])
            except ApiError as exc:  # e.g. no `get` granted: let the apply decide (it may be refused too)
                log.warning("cannot check %s %s/%s: %s", obj["kind"], meta["namespace"], meta["name"], exc)
                return None
            return None if found is None or owned_by(found, uid) else f"{obj['kind']} {meta['name']}"

        found = await asyncio.gather(*(check(o) for o in objects))
        return tuple(f for f in found if f is not None)

    async def explain_waiting(self, ns: str, run: ObservedRun) -> ObservedRun:
        """Relay why a run's pods do not run (unschedulable, image pull, missing Secret/ConfigMap)."""
        try:
            pods = await self.client.list("v1", "Pod", ns, f"{RUN_LABEL}={run.name}")
        except ApiError as exc:
            log.warning("cannot read pods of %s/%s: %s", ns, run.name, exc)
            return run
        reason = pod_waiting_reason(pods)
        return replace(run, message=reason) if reason else run

    async def explain_failure(self, owner: Key, run: ObservedRun) -> ObservedRun:
        """Add the stage's own error line (pod termination message) to a failed Job's message (its
        pods are listed once: a failed Job does not change any more)."""
        ns = owner[0]
        cached = self.caches.failure_reason(owner, run.name)
        if cached is None:
            try:
                pods = await self.client.list("v1", "Pod", ns, f"batch.kubernetes.io/job-name={run.name}")
            except ApiError as exc:
                log.warning("cannot read pods of %s/%s: %s", ns, run.name, exc)
                return run
            cached = pod_failure_reason(pods) or ""
            self.caches.record_failure_reason(owner, run.name, cached)
        if not cached:
            return run
        return replace(run, message=f"{cached} (after {run.attempts} attempt(s); {run.message})")
