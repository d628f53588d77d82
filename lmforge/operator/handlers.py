"""The kopf wiring: I/O only. Every decision is the pure reconciler's; this module feeds it what the
cluster and the store say, and carries its decision out.

Flow: kopf indices cache our five kinds and the stage children (Jobs, Deployments) so a reconcile
makes no reads from the API server; watch events of a resource, of its children and of the
resources it references put its key on a de-duplicating work queue; a worker then observes
(indices + `result.json`/`progress.json` from the store), calls `reconcile`, server-side-applies the
children that are missing or changed (a run's objects in one concurrent round), deletes superseded
runs, patches `.status` only when it changed, posts Events, hands a release's status to the
model-registry alias backend (`aliases.py`, a background thread) and schedules the next look
(`requeue_after`). While other resources' first reconciles are queued, a reconcile that has just
made a Job leaves its status patch and Events to a routine-lane look: during a burst of applies the
API server's writes go to creating Jobs first (the apply → Job latency the benchmark measures).

kopf's indices are fully populated before any event handler runs, so after a restart the first
reconcile of each resource already sees its Jobs: deterministic child names plus that view mean a
restart re-creates nothing. No finalizer is added unless store clean-up is configured. What the
controller remembers between events beyond kopf's indices lives in `caches.ControllerCaches`.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import kopf

from lmforge.api.contract import PROGRESS_KEY, RESULT_KEY, ProgressRecord, record_from_json
from lmforge.api.kinds import KINDS, Resource, references
from lmforge.api.meta import GROUP, VERSION, Status, now_rfc3339
from lmforge.api.release import ModelRelease
from lmforge.api.validation import parse_resource
from lmforge.operator.aliases import AliasBackend
from lmforge.operator.caches import ControllerCaches, Key
from lmforge.operator.kube import Owner, build_children, observe_child, traffic
from lmforge.operator.kube.client import ApiError, KubeClient
from lmforge.operator.kube.meta import RUN_LABEL, SPEC_HASH, owned_by, owner_of
from lmforge.operator.kube.observe import pods_worth_a_look, with_store
from lmforge.operator.kube.prometheus import canary_metrics
from lmforge.operator.kube.serving import endpoint
from lmforge.operator.kube.traffic import run_url
from lmforge.operator.lookups import Lookups
from lmforge.operator.metrics import QUEUE_WAIT_SECONDS, RECONCILE_SECONDS, RECONCILES, ResourceMetrics
from lmforge.operator.reconcile import (
    Decision,
    Event,
    InputState,
    Observed,
    ObservedRun,
    RunState,
    StageRun,
    reconcile,
)
from lmforge.operator.reconcile.analysis import CanaryMetrics
from lmforge.operator.reconcile.canary import metrics_due
from lmforge.operator.reconcile.reconciler import expected_runs
from lmforge.operator.reconcile.runs import resource_prefix
from lmforge.operator.settings import Settings
from lmforge.operator.workqueue import WorkQueue
from lmforge.store import ArtifactNotFound, Store, StoreError, open_store

log = logging.getLogger("lmforge.operator")
KIND_OF_LOWER = {k.lower(): k for k in KINDS}
API_VERSION = f"{GROUP}/{VERSION}"
_CHILD_KINDS = (("batch", "v1", "jobs", "Job"), ("apps", "v1", "deployments", "Deployment"))


def _slim(body: Any) -> dict[str, Any]:
    """What the caches keep of an object: enough to reconcile, nothing more (memory at 1,000s)."""
    meta = body.get("metadata", {})
    return {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": {
            k: meta.get(k)
            for k in (
                "name",
                "namespace",
                "uid",
                "generation",
                "labels",
                "annotations",
                "deletionTimestamp",
                "creationTimestamp",
            )
            if meta.get(k) is not None
        },
        "spec": dict(body.get("spec") or {}),
        "status": dict(body.get("status") or {}),
    }


def _summary(status: dict[str, Any]) -> tuple[Any, ...]:
    """What dependents care about: phase, Ready, gate, artifacts."""
    conds = {c.get("type"): (c.get("status"), c.get("message")) for c in status.get("conditions") or []}
    return (
        status.get("phase"),
        conds.get("Ready"),
        conds.get("GatePassed"),
        tuple(sorted((status.get("artifacts") or {}).items())),
        status.get("endpoint"),
    )


def read_records(store: Store, prefix: str) -> tuple[ProgressRecord | None, ProgressRecord | None]:
    """(result, progress) of a run from the store; absent or unreadable ones are None."""
    out: list[ProgressRecord | None] = []
    for key in (RESULT_KEY, PROGRESS_KEY):
        try:
            out.append(record_from_json(store.get_bytes(f"{prefix}/{key}")))
        except ArtifactNotFound:
            out.append(None)
    return out[0], out[1]


class Controller:
    """State shared by the handlers of one operator process (kept in kopf's memo, not globals)."""

    def __init__(self, settings: Settings, client: KubeClient, store: Store) -> None:
        self.settings = settings
        self.client = client
        self.store = store
        self.indices: dict[str, Any] = {}
        """kopf's indices (filled at start-up, kept and pruned by kopf from the watch)."""
        self.caches = ControllerCaches()
        """Our own bookkeeping between events; every entry of a resource goes on its DELETED event."""
        self.lookups = Lookups(client, settings, self.caches)
        self.allowlists = settings.allowlists()
        self._posting: set[asyncio.Task[None]] = set()
        """Events being posted (references kept so the tasks are not garbage-collected)."""
        self.metrics = ResourceMetrics()
        self.aliases = AliasBackend(settings.tracking_uri) if settings.tracking_uri else None
        """Moves the releases' model-registry aliases as they roll out (the chart's `tracking.uri`)."""
        self.queue: WorkQueue[Key] = WorkQueue(self.reconcile, settings.workers, on_wait=QUEUE_WAIT_SECONDS.observe)

    # ------------------------------------------------------------------ cache reads

    def body(self, key: Key) -> dict[str, Any] | None:
        ns, kind, name = key
        store = self.indices[f"lmforge_{KINDS[kind].plural}"].get((ns, name))
        return next(iter(store), None) if store else None

    def children(self, key: Key) -> list[dict[str, Any]]:
        ns, kind, name = key
        out: list[dict[str, Any]] = []
        for _g, _v, plural, _k in _CHILD_KINDS:
            store = self.indices[f"lmforge_children_{plural}"].get((ns, kind.lower(), name))
            out += list(store) if store else []
        return out

    # ------------------------------------------------------------------ event intake

    def on_resource_event(self, kind: str, event_type: str | None, body: Any) -> None:
        meta = body.get("metadata", {})
        key: Key = (meta.get("namespace", ""), kind, meta.get("name", ""))
        status = dict(body.get("status") or {})
        if event_type == "DELETED":
            for dep in self.caches.dependents(key):
                self.queue.add(dep)
            self.caches.forget(key)
            self.metrics.forget(*key)
            return
        if not self.caches.is_own_write(key, meta.get("generation"), status):
            self.queue.add(key)  # not merely the echo of our own status patch
        if self.caches.summary_changed(key, _summary(status)):
            for dep in self.caches.dependents(key):
                self.queue.add(dep)

    def on_child_event(self, body: Any, event_type: str | None = None) -> None:
        meta = body.get("metadata", {})
        owner = owner_of(meta.get("labels") or {})
        if owner is None:
            return
        ns = meta.get("namespace", "")
        key: Key = (ns, KIND_OF_LOWER[owner[0]], owner[1])
        if event_type == "DELETED":  # applied again if a reconcile still wants it
            self.caches.forget_run(key, meta.get("name", ""), [(ns, body.get("kind", ""), meta.get("name", ""))])
        self.queue.add(key, urgent=False)  # routine: a child's status moved; new resources' first reconciles go first

    # ------------------------------------------------------------------ reconcile

    async def reconcile(self, key: Key) -> float | None:
        body = self.body(key)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return None
        pending = self.caches.pending_status(key, body["metadata"].get("resourceVersion"))
        if pending is not None:
            body = {**body, "status": pending}  # our last patch has not come back yet
        started = time.perf_counter()
        kind = key[1]
        outcome = "ok"
        try:
            resource, problems = parse_resource({k: body.get(k) for k in ("apiVersion", "kind", "metadata", "spec")})
            if resource is None:
                outcome = "invalid"
            invalid = "; ".join(f"{p.field}: {p.message}" if p.field else p.message for p in problems) or None
            decision = await self._decide(key, body, resource, invalid)
            await self._act(key, body, resource, decision)
        except Exception:
            outcome = "error"
            raise
        finally:
            RECONCILES.labels(kind, outcome).inc()
            RECONCILE_SECONDS.labels(kind).observe(time.perf_counter() - started)
        if decision.requeue_after is None:
            return None
        return min(decision.requeue_after, self.settings.poll_seconds)

    def _inputs(self, ns: str, resource: Resource) -> dict[str, InputState]:
        out: dict[str, InputState] = {}
        for ref in references(resource):
            other = self.body((ns, ref.kind, ref.name))
            if other is None:
                out[f"{ref.kind}/{ref.name}"] = InputState(ref.kind, ref.name, False)
                continue
            try:
                status = Status.model_validate(other.get("status") or {})
            except ValueError:
                status = Status()
            out[f"{ref.kind}/{ref.name}"] = InputState(ref.kind, ref.name, True, status, other.get("spec"))
        return out

    async def _decide(self, key: Key, body: dict[str, Any], resource: Resource | None, invalid: str | None) -> Decision:
        ns, kind, name = key
        try:
            status = Status.model_validate(body.get("status") or {})
        except ValueError:
            status = Status()
        inputs = self._inputs(ns, resource) if resource is not None else {}
        if resource is not None:
            self.caches.record_references(key, [(ns, r.kind, r.name) for r in references(resource)])
        obs = Observed(
            resource=resource,
            kind=kind,
            name=name,
            generation=body["metadata"].get("generation"),
            status=status,
            store=self.settings.store,
            inputs=inputs,
            invalid=invalid,
            allowlists=self.allowlists,
            traffic_split=True,
        )
        clock = now_rfc3339()  # one clock for the metrics look-up and the decision (canary steps)
        port = resource.spec.serving.port if isinstance(resource, ModelRelease) else 8000
        owner = self._owner(body)
        url = endpoint(owner, port)
        runs: dict[str, ObservedRun] = {}
        children = self.children(key)
        now = datetime.now(UTC)
        for child in children:
            seen = observe_child(child, url)
            if seen is not None and pods_worth_a_look(child, seen, now):
                seen = await self.lookups.explain_waiting(ns, seen)
            if seen is not None and seen.endpoint is not None and child.get("kind") == "Deployment":
                seen = replace(seen, run_endpoint=run_url(owner, seen.name, port))
            if seen is not None:
                runs[seen.name] = seen
        if isinstance(resource, ModelRelease):
            obs = replace(obs, canary_metrics=await self._canary_metrics(ns, resource, status, clock))
        for run_name, stage, prefix in expected_runs(obs):
            try:
                result, progress = await asyncio.to_thread(read_records, self.store, prefix)
            except StoreError as exc:  # shown on the resource; one line per retry, no traceback
                log.warning("%s/%s/%s: store %s unavailable: %s", ns, kind, name, self.settings.store, exc)
                return reconcile(replace(obs, runs=runs, store_error=str(exc)), clock)
            merged = with_store(runs.get(run_name), run_name, stage, result, progress)
            seen_failed = (observed := runs.get(run_name)) is not None and observed.state is RunState.FAILED
            if merged is not None and merged.state is RunState.FAILED and seen_failed:
                # Whether retried or not (exit 2 stops at once), the stage's own error line is what
                # the user needs; the Job's condition only says which rule ended it.
                merged = await self.lookups.explain_failure(key, merged)
            if merged is not None:
                runs[run_name] = merged
        obs = replace(obs, runs=runs)
        decision = reconcile(obs, clock)
        existing = {c["metadata"]["name"] for c in children}
        absent, foreign = {}, {}
        for run in decision.runs:
            if run.name in existing:
                continue
            # A run not created yet: none of its objects may exist already unless they are ours.
            unapplied = [
                o
                for o in build_children(run, owner, self.settings)
                if self.caches.applied_hash(key, (ns, o["kind"], o["metadata"]["name"])) is None
            ]
            clash, gaps = await asyncio.gather(
                self.lookups.foreign_objects(unapplied, owner.uid), self.lookups.missing_secrets(ns, run)
            )  # one round trip
            if clash:
                foreign[run.name] = clash
            if gaps:
                absent[run.name] = gaps
        if not absent and not foreign:
            self.caches.clear_secret_waits(key)
            return decision
        waits = self.caches.count_secret_wait(key)
        return reconcile(replace(obs, missing_secrets=absent, conflicts=foreign, secret_waits=waits), clock)

    async def _canary_metrics(self, ns: str, release: ModelRelease, status: Status, now: str) -> CanaryMetrics | None:
        """The figures of the canary step the reconcile will judge, from Prometheus, only when one is
        due (`metrics_due`) and a Prometheus URL is configured; None otherwise (no URL: a step passes
        on time alone, and says so)."""
        if not self.settings.prometheus_url:
            return None
        due = metrics_due(release, status.rollout, now)
        if due is None:
            return None
        stable, candidate, window = due
        return await asyncio.to_thread(canary_metrics, self.settings.prometheus_url, ns, stable, candidate, window)

    def _owner(self, body: dict[str, Any]) -> Owner:
        meta = body["metadata"]
        return Owner(
            body["kind"],
            meta["name"],
            meta.get("namespace", ""),
            meta.get("uid", ""),
            tuple(sorted((meta.get("labels") or {}).items())),
        )

    async def _act(self, key: Key, body: dict[str, Any], resource: Resource | None, decision: Decision) -> None:
        ns, kind, name = key
        if self.aliases is not None and isinstance(resource, ModelRelease):
            self.aliases.sync(resource, decision.status)  # never blocks: a background thread sends it
        owner = self._owner(body)
        created = await self._apply_children(key, owner, decision)
        if isinstance(resource, ModelRelease):
            await self._split_traffic(key, owner, resource, decision)
        for run_name in decision.delete:
            await self._delete_run(key, run_name)
        if created and self.queue.urgent_waiting():
            # Other resources still wait for their first Jobs: this status patch and its Events
            # would compete with their writes on the API server. Leave them to a routine-lane
            # reconcile (the decision is made again from the then-current view, so nothing is lost).
            self.queue.add(key, urgent=False)
            return
        new = decision.status.wire()
        try:
            current = Status.model_validate(body.get("status") or {}).wire()
        except ValueError:
            current = {}
        if new != current:
            patch: dict[str, Any] = {**{k: None for k in current if k not in new}, **new}
            await self.client.patch_status(API_VERSION, kind, ns, name, patch)
            self.caches.record_patched(key, body["metadata"].get("resourceVersion"), new)
        self.caches.record_written(key, body["metadata"].get("generation"), new)
        self.metrics.observe(ns, kind, name, decision.status)
        for event in decision.events:  # off the worker: an Event never delays the next resource's Job
            task = asyncio.create_task(self._post_event(owner, body, event))
            self._posting.add(task)
            task.add_done_callback(self._posting.discard)

    async def _apply_children(self, key: Key, owner: Owner, decision: Decision) -> bool:
        """Server-side-apply what `decision.runs` need and is missing or changed; True if a Job or
        Deployment was written. A run's objects go in one concurrent round (one round trip before
        the Job exists, not three): a pod that starts before its ConfigMap is merely retried by the
        kubelet. Only a Volcano PodGroup goes first: its scheduler must find it before the pods."""
        ns = key[0]
        existing = {(c["kind"], c["metadata"]["name"]) for c in self.children(key)}
        created = False
        pin = traffic.service_pin(decision.traffic)
        for run in decision.runs:
            todo: list[dict[str, Any]] = []
            for obj in build_children(run, owner, self.settings, self._replicas(run, decision), pin):
                ident = (ns, obj["kind"], obj["metadata"]["name"])
                if obj["kind"] == "Job" and (obj["kind"], ident[2]) in existing:
                    continue  # Jobs are immutable and may be un-suspended by Kueue: create once
                if self.caches.applied_hash(key, ident) != obj["metadata"]["annotations"][SPEC_HASH]:
                    todo.append(obj)
            first = [o for o in todo if o["kind"] == "PodGroup"]
            for batch in (first, [o for o in todo if o["kind"] != "PodGroup"]):
                await asyncio.gather(*(self.client.apply(o) for o in batch))
                for obj in batch:
                    self.caches.record_applied(
                        key, (ns, obj["kind"], obj["metadata"]["name"]), obj["metadata"]["annotations"][SPEC_HASH]
                    )
            created = created or any(o["kind"] in ("Job", "Deployment") for o in todo)
        return created

    def _replicas(self, run: StageRun, decision: Decision) -> int | None:
        """A serving run's replicas for its share of a canary (traffic.py); None: its own count."""
        if not run.long_running or not decision.traffic:
            return None
        weighted = ModelRelease.model_validate(run.spec.resource).spec.serving.gateway is not None
        return traffic.replicas(run.replicas, decision.traffic.get(run.name), new=True, weighted=weighted)

    async def _split_traffic(self, key: Key, owner: Owner, release: ModelRelease, decision: Decision) -> None:
        """Carry out `decision.traffic` beyond the runs' own objects: the older versions' replicas (a
        stable one scaled down for a canary by replica ratio, given back its count after a rollback),
        and with `serving.gateway` the release's HTTPRoute weights."""
        if not decision.traffic:
            return
        ns = key[0]
        gateway = release.spec.serving.gateway
        current = {r.name for r in decision.runs}
        for child in self.children(key):
            name = child["metadata"]["name"]
            if child["kind"] != "Deployment" or name in current or name in decision.delete:
                continue
            spec = child.get("spec") or {}
            annotations = child["metadata"].get("annotations") or {}
            full = int(annotations.get(traffic.FULL_REPLICAS) or spec.get("replicas") or 1)
            want = traffic.replicas(full, decision.traffic.get(name, 100), new=False, weighted=gateway is not None)
            if int(spec.get("replicas", 1)) != want:
                log.info("scaling %s/%s to %d replicas (traffic %s)", ns, name, want, decision.traffic)
                await self.client.scale(ns, name, want)
        if gateway is None:
            await self._drop_route(key, owner)
            return
        route = traffic.http_route(owner, gateway, decision.traffic, release.spec.serving.port)
        ident = (ns, "HTTPRoute", owner.name)
        digest = route["metadata"]["annotations"][SPEC_HASH]
        if self.caches.applied_hash(key, ident) != digest:
            try:
                await self.client.apply(route)
            except ApiError as exc:  # no Gateway API CRDs, or no RBAC: the shares hold, say why once per try
                log.warning(
                    "%s/%s: cannot apply HTTPRoute %s (Gateway API installed?): %s", ns, key[2], owner.name, exc
                )
                return
            self.caches.record_applied(key, ident, digest)

    async def _drop_route(self, key: Key, owner: Owner) -> None:
        """The release's HTTPRoute once `serving.gateway` is gone: deleted if this release owns it (a
        route left behind would keep sending the Gateway's traffic to versions that no longer exist;
        one of the user's own of the same name is left alone). Looked up once per operator process
        and release, then remembered as absent."""
        ns = key[0]
        ident = (ns, "HTTPRoute", owner.name)
        if self.caches.applied_hash(key, ident) == traffic.ROUTE_ABSENT:
            return
        try:
            found = await self.client.get(traffic.HTTPROUTE_API, "HTTPRoute", ns, owner.name)
            if found is not None and owned_by(found, owner.uid):
                log.info("%s/%s: serving.gateway removed, deleting its HTTPRoute", ns, key[2])
                await self.client.delete(traffic.HTTPROUTE_API, "HTTPRoute", ns, owner.name)
        except ApiError as exc:  # no Gateway API CRDs: no route can exist; no RBAC: say so, try again later
            if exc.status != 404:
                log.warning("%s/%s: cannot check for a stale HTTPRoute %s: %s", ns, key[2], owner.name, exc)
                return
        self.caches.record_applied(key, ident, traffic.ROUTE_ABSENT)

    async def _delete_run(self, key: Key, run_name: str) -> None:
        ns = key[0]
        children = [
            ("batch/v1", "Job", run_name),
            ("apps/v1", "Deployment", run_name),
            ("v1", "Service", run_name),
            ("v1", "ConfigMap", f"{run_name}-spec"),
        ]
        if self.settings.network_policies:  # only then is the operator allowed to touch them
            children.append(("networking.k8s.io/v1", "NetworkPolicy", run_name))
        for api_version, kind, name in children:
            if await self.client.delete(api_version, kind, ns, name):
                log.info("deleted superseded %s %s/%s", kind, ns, name)
            self.caches.forget_run(key, run_name, [(ns, kind, name)])

    async def _post_event(self, owner: Owner, body: dict[str, Any], event: Event) -> None:
        now = now_rfc3339()
        obj = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{owner.name}.{uuid.uuid4().hex[:12]}", "namespace": owner.namespace},
            "involvedObject": {
                "apiVersion": API_VERSION,
                "kind": owner.kind,
                "name": owner.name,
                "namespace": owner.namespace,
                "uid": owner.uid,
                "resourceVersion": body["metadata"].get("resourceVersion"),
            },
            "reason": event.reason,
            "message": event.message[:1024],
            "type": event.type,
            "source": {"component": "lmforge-operator"},
            "reportingComponent": "lmforge.io/operator",
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await self.client.create(obj)
        except ApiError as exc:  # an Event is a courtesy; never fail a reconcile for it
            log.warning("cannot post event %s on %s/%s: %s", event.reason, owner.namespace, owner.name, exc)

    async def flush_events(self, timeout: float = 5.0) -> None:
        """Let Events still being posted finish (on shutdown), for at most `timeout` seconds."""
        if self._posting:
            await asyncio.wait(set(self._posting), timeout=timeout)

    async def cleanup_store(self, kind: str, namespace: str | None, name: str) -> None:
        """Delete everything a resource published (only with store clean-up configured); a resource
        of the same name in another namespace keeps its artifacts."""
        count = await asyncio.to_thread(self.store.delete_prefix, resource_prefix(kind, namespace, name))
        log.info("deleted %d store objects of %s %s/%s", count, kind, namespace, name)


def register(registry: kopf.OperatorRegistry, settings: Settings) -> Controller:
    """Register every handler on `registry`; returns the controller they share."""
    ctl = Controller(settings, KubeClient.from_environment(), open_store(settings.store))

    @kopf.on.startup(registry=registry)
    async def _startup(settings: kopf.OperatorSettings, **kwargs: Any) -> None:
        settings.posting.enabled = False  # we post our own, meaningful Events
        settings.batching.batch_window = 0.02  # latency apply→Job: don't sit on events
        settings.watching.server_timeout = 300
        settings.persistence.finalizer = "lmforge.io/store-cleanup"
        # kopf retries a refused cluster-scope listing (CRDs, namespaces: not granted in namespaced
        # mode) nine times over ~60 s before falling back; a few short tries are enough.
        settings.networking.error_backoffs = [0.2, 0.5, 1.0]
        ctl.indices = {k: v for k, v in kwargs.items() if k.startswith("lmforge_")}
        ctl.queue.start()

    @kopf.on.login(registry=registry)
    def _login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return kopf.login_via_client(**kwargs)  # the same identity as our own client

    @kopf.on.cleanup(registry=registry)
    async def _cleanup(**_: Any) -> None:
        await ctl.queue.stop()
        await ctl.flush_events()
        if ctl.aliases is not None:
            await asyncio.to_thread(ctl.aliases.close)
        await ctl.client.close()

    for info in KINDS.values():
        _register_kind(registry, ctl, info.kind, info.plural, settings.store_cleanup)

    def _child_index(*, namespace: str | None, body: kopf.Body, **_: Any) -> dict[Any, Any]:
        owner = owner_of(dict(body.metadata.labels))
        if owner is None:
            return {}
        return {(namespace, owner[0], owner[1]): _slim(body)}

    def _child_event(type: str | None, body: kopf.Body, **_: Any) -> None:
        ctl.on_child_event(body, type)

    for group, version, plural, _kind in _CHILD_KINDS:
        kopf.index(
            group, version, plural, id=f"lmforge_children_{plural}", registry=registry, labels={RUN_LABEL: kopf.PRESENT}
        )(_child_index)
        kopf.on.event(
            group, version, plural, id=f"lmforge_child_{plural}", registry=registry, labels={RUN_LABEL: kopf.PRESENT}
        )(_child_event)
    return ctl


def _register_kind(registry: kopf.OperatorRegistry, ctl: Controller, kind: str, plural: str, cleanup: bool) -> None:
    def _index(*, namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
        return {(namespace, name): _slim(body)}

    def _event(type: str | None, body: kopf.Body, **_: Any) -> None:
        ctl.on_resource_event(kind, type, body)

    kopf.index(GROUP, VERSION, plural, id=f"lmforge_{plural}", registry=registry)(_index)
    kopf.on.event(GROUP, VERSION, plural, id=f"lmforge_event_{plural}", registry=registry)(_event)
    if cleanup:

        async def _delete(name: str, namespace: str | None, **_: Any) -> None:
            await ctl.cleanup_store(kind, namespace, name)

        kopf.on.delete(GROUP, VERSION, plural, id=f"lmforge_delete_{plural}", registry=registry)(_delete)


__all__ = ["Controller", "register"]
