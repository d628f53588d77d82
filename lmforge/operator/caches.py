"""What the controller remembers between events, beyond kopf's indices: all of it in one class.

kopf's indices (our five kinds, and the Jobs/Deployments labelled as our children) are the view of
the cluster a reconcile decides from; kopf fills and prunes them from the watch. What is here is the
operator's own bookkeeping about what *it* did or saw, each cache because without it a decision
would be wrong or an API call would be repeated:

| cache            | key → value                                   | why                                                     |
|------------------|-----------------------------------------------|---------------------------------------------------------|
| `refs`           | resource → the resources its spec references   | a referenced resource's change re-queues its dependents |
| `written`        | resource → (generation, status) we decided      | a watch event that only echoes our own status patch     |
|                  |                                               | does not queue another reconcile                        |
| `unseen`         | resource → (resourceVersion, status) patched    | a child's event can queue the next reconcile before our |
|                  | but not yet back from the watch               | patch reaches the index; deciding from the stale status |
|                  |                                               | would redo the transition and post its Event twice      |
| `seen`           | resource → summary (phase, Ready, gate,        | dependents are re-queued only when what they read of it |
|                  | artifacts, endpoint)                          | changed, not on every status patch                      |
| `applied`        | resource → {child (ns, Kind, name): spec hash}  | an unchanged child is not applied again; a new run's    |
|                  |                                               | objects we applied are not checked for foreign owners   |
| `secret_waits`   | resource → reconciles spent waiting for a      | the wait backs off (`secret_backoff`)                   |
|                  | Secret or a name conflict                     |                                                         |
| `secrets`        | (ns, Secret) → (when seen, its key names)      | many runs share one Secret: one GET per TTL, not per run |
| `failure_reasons`| resource → {run: the failed pod's reason}       | a failed Job does not change: its pods are listed once  |

Bounds and pruning: every cache keyed by resource holds at most one entry per live resource of ours
(and, inside, one per child object or run of it), and `forget(resource)` — called on its DELETED
event — drops all of them, so churn leaves nothing behind. `forget_run` drops one run's children and
failure reason when a superseded run is deleted or a child's DELETED event arrives (a running Job
deleted by hand is then applied again rather than skipped as "already applied"). `secrets` holds
present Secrets only (absence is always re-checked), one entry per (namespace, Secret) referenced;
an entry older than `secret_ttl` is dropped when read and swept on every `forget`.

The class is not thread-safe: the handlers run on kopf's one event loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

Key = tuple[str, str, str]
"""(namespace, Kind, name) of one of our resources."""
ChildKey = tuple[str, str, str]
"""(namespace, Kind, name) of an object the operator applied for a resource."""
SECRET_TTL_SECONDS = 30.0
"""How long a Secret seen to exist is taken as existing without another GET (many runs share one)."""


class ControllerCaches:
    """The controller's bookkeeping (see the module docstring for what each cache holds and why)."""

    def __init__(self, secret_ttl: float = SECRET_TTL_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self.secret_ttl = secret_ttl
        self._clock = clock
        self._refs: dict[Key, frozenset[Key]] = {}
        self._written: dict[Key, tuple[Any, dict[str, Any]]] = {}
        self._unseen: dict[Key, tuple[str | None, dict[str, Any]]] = {}
        self._seen: dict[Key, tuple[Any, ...]] = {}
        self._applied: dict[Key, dict[ChildKey, str]] = {}
        self._secret_waits: dict[Key, int] = {}
        self._secrets: dict[tuple[str, str], tuple[float, frozenset[str]]] = {}
        self._failure_reasons: dict[Key, dict[str, str]] = {}

    # ------------------------------------------------------------------ references

    def record_references(self, key: Key, targets: Iterable[Key]) -> None:
        """What `key`'s current spec references (replaces what an older spec referenced)."""
        self._refs[key] = frozenset(targets)

    def dependents(self, key: Key) -> list[Key]:
        """The resources whose spec references `key`."""
        return [referrer for referrer, targets in self._refs.items() if key in targets]

    # ------------------------------------------------------------------ our own status writes

    def record_written(self, key: Key, generation: Any, status: dict[str, Any]) -> None:
        """The status our last reconcile of `key` at `generation` decided (patched or already there)."""
        self._written[key] = (generation, status)

    def is_own_write(self, key: Key, generation: Any, status: dict[str, Any]) -> bool:
        """Whether a watch event with this generation and status is merely the echo of our write."""
        return self._written.get(key) == (generation, status)

    def record_patched(self, key: Key, resource_version: str | None, status: dict[str, Any]) -> None:
        """We patched `status` onto the body that had `resource_version`."""
        self._unseen[key] = (resource_version, status)

    def pending_status(self, key: Key, resource_version: str | None) -> dict[str, Any] | None:
        """Our patched status while the index still shows the body we patched (`resource_version`);
        None once the watch has brought a newer body, which also forgets the patch."""
        pending = self._unseen.get(key)
        if pending is None:
            return None
        if pending[0] == resource_version:
            return pending[1]
        del self._unseen[key]
        return None

    # ------------------------------------------------------------------ what dependents read

    def summary_changed(self, key: Key, summary: tuple[Any, ...]) -> bool:
        """Record `summary` of `key`; True when it differs from the last one recorded."""
        if self._seen.get(key) == summary:
            return False
        self._seen[key] = summary
        return True

    # ------------------------------------------------------------------ applied children

    def record_applied(self, owner: Key, child: ChildKey, spec_hash: str) -> None:
        """`child` of `owner` was server-side-applied with `spec_hash`."""
        self._applied.setdefault(owner, {})[child] = spec_hash

    def applied_hash(self, owner: Key, child: ChildKey) -> str | None:
        """The spec hash `child` of `owner` was last applied with; None if not applied (or forgotten)."""
        return self._applied.get(owner, {}).get(child)

    # ------------------------------------------------------------------ waits for Secrets / conflicts

    def count_secret_wait(self, key: Key) -> int:
        """One more reconcile of `key` waits; returns how many waited before this one."""
        waits = self._secret_waits.get(key, 0)
        self._secret_waits[key] = waits + 1
        return waits

    def clear_secret_waits(self, key: Key) -> None:
        """`key` no longer waits: the next wait starts its back-off afresh."""
        self._secret_waits.pop(key, None)

    # ------------------------------------------------------------------ Secrets seen to exist

    def secret_keys(self, namespace: str, name: str) -> frozenset[str] | None:
        """The key names of a Secret seen within `secret_ttl`; None when not seen or seen too long ago."""
        cached = self._secrets.get((namespace, name))
        if cached is None:
            return None
        if self._clock() - cached[0] >= self.secret_ttl:
            del self._secrets[(namespace, name)]
            return None
        return cached[1]

    def record_secret(self, namespace: str, name: str, keys: frozenset[str]) -> None:
        """The Secret exists with these key names (names only: values are never kept)."""
        self._secrets[(namespace, name)] = (self._clock(), keys)

    # ------------------------------------------------------------------ failed runs

    def failure_reason(self, owner: Key, run: str) -> str | None:
        """The failed pod's reason recorded for `run` of `owner` ("" when its pods gave none)."""
        return self._failure_reasons.get(owner, {}).get(run)

    def record_failure_reason(self, owner: Key, run: str, reason: str) -> None:
        self._failure_reasons.setdefault(owner, {})[run] = reason

    # ------------------------------------------------------------------ pruning

    def forget_run(self, owner: Key, run: str, children: Iterable[ChildKey]) -> None:
        """A run of `owner` (or some of its objects) was deleted: drop what was kept of `children`
        and the run's failure reason, so a run of that name is applied and explained afresh."""
        applied = self._applied.get(owner)
        if applied is not None:
            for child in children:
                applied.pop(child, None)
            if not applied:
                del self._applied[owner]
        reasons = self._failure_reasons.get(owner)
        if reasons is not None:
            reasons.pop(run, None)
            if not reasons:
                del self._failure_reasons[owner]

    def forget(self, key: Key) -> None:
        """`key` was deleted: drop every entry of it, and Secrets seen longer ago than the TTL."""
        for cache in (
            self._refs,
            self._written,
            self._unseen,
            self._seen,
            self._applied,
            self._secret_waits,
            self._failure_reasons,
        ):
            cache.pop(key, None)
        now = self._clock()
        for secret in [s for s, (when, _) in self._secrets.items() if now - when >= self.secret_ttl]:
            del self._secrets[secret]

    def holding(self, key: Key) -> list[str]:
        """The names of the caches that still hold an entry of resource `key` (empty after `forget`);
        for tests and debugging."""
        caches: dict[str, dict[Key, Any]] = {
            "refs": self._refs,
            "written": self._written,
            "unseen": self._unseen,
            "seen": self._seen,
            "applied": self._applied,
            "secret_waits": self._secret_waits,
            "failure_reasons": self._failure_reasons,
        }
        return [name for name, cache in caches.items() if key in cache]

    def sizes(self) -> dict[str, int]:
        """Entries per cache (a resource's children and runs count one each): what grows with churn."""
        return {
            "refs": len(self._refs),
            "written": len(self._written),
            "unseen": len(self._unseen),
            "seen": len(self._seen),
            "applied": sum(map(len, self._applied.values())),
            "secret_waits": len(self._secret_waits),
            "secrets": len(self._secrets),
            "failure_reasons": sum(map(len, self._failure_reasons.values())),
        }
