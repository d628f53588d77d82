"""Model-registry aliases (`champion`, `challenger`) applied to MLflow as a release's rollout proceeds.

What the aliases should be is the pure `release_aliases(status)` (lmforge/operator/reconcile/serving.py);
this backend only makes it so. The serve stage registers each version, tagged with its LMForge run id
(`lmforge.run_id`); here a version is found by that tag and the alias set on it, or an alias deleted.

It never blocks or fails a reconcile: `sync` only records what is wanted and wakes a background
thread, which sends each change with the REST client's bounded timeout. A failed change (server away,
version not registered yet) is retried with backoff until it is made or a later `sync` wants something
else; a failed request is counted (`lmforge_registry_alias_failures_total`) and logged. A change
already made is not sent again. Only releases with
`spec.tracking.enabled` are touched, and only when a tracking URI is configured (the caller makes no
`AliasBackend` otherwise).
"""

from __future__ import annotations

import logging
import threading
import time

from lmforge.api.meta import Status
from lmforge.api.release import ModelRelease
from lmforge.api.tracking import RegistryAlias
from lmforge.operator.metrics import REGISTRY_FAILURES
from lmforge.operator.reconcile.serving import release_aliases
from lmforge.store.mlflow import MlflowRest, TrackingError

log = logging.getLogger("lmforge.operator.aliases")

RUN_ID_TAG = "lmforge.run_id"
"""Tag of a registered model version naming the LMForge run that registered it (set by the serve stage)."""
TIMEOUT_S = 5.0
"""Seconds one registry request may take."""
BACKOFF_MAX_S = 30.0
WARN_EVERY_S = 30.0

Change = tuple[str, RegistryAlias]
"""(registered model, alias)."""


class NotRegisteredYet(TrackingError):
    """The version to alias is not in the registry yet (its serve stage registers it in the background)."""


class AliasBackend:
    """Applies the aliases `release_aliases` decides to one MLflow server, from a background thread."""

    def __init__(self, uri: str, *, client: MlflowRest | None = None) -> None:
        self.uri = uri
        self.client = client or MlflowRest(uri, timeout=TIMEOUT_S)
        self.failures = 0
        """Registry requests that failed (each is retried)."""
        self._applied: dict[Change, str | None] = {}
        """What the server was last told, per (model, alias): a run id, or None for deleted."""
        self._pending: dict[Change, str | None] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._retry_at = 0.0
        self._backoff = 0.5
        self._last_warn = 0.0
        self._thread = threading.Thread(target=self._loop, name="lmforge-aliases", daemon=True)
        self._thread.start()

    @staticmethod
    def model_name(release: ModelRelease) -> str:
        """The registered model of a release's versions (the serve stage registers them under it)."""
        return release.spec.tracking.registered_model or release.metadata.name

    def sync(self, release: ModelRelease, status: Status) -> None:
        """Record the aliases `status` calls for; returns at once (the thread sends the changes)."""
        if not release.spec.tracking.enabled:
            return
        model = self.model_name(release)
        wanted = release_aliases(status)
        with self._lock:
            for alias, run_id in wanted.items():
                change = (model, alias)
                if change not in self._applied or self._applied[change] != run_id:
                    self._pending[change] = run_id
                else:
                    self._pending.pop(change, None)  # back to what the server has: nothing to send
            if self._pending:
                self._wake.set()

    def pending(self) -> dict[Change, str | None]:
        """Changes not made yet (tests and the shutdown flush read it)."""
        with self._lock:
            return dict(self._pending)

    def close(self, timeout: float = 5.0) -> None:
        """Try what is pending for at most `timeout` seconds, then stop the thread."""
        deadline = time.monotonic() + timeout
        self._retry_at = 0.0
        self._wake.set()
        while self.pending() and time.monotonic() < deadline:
            time.sleep(0.05)
        self._stop.set()
        self._wake.set()
        self._thread.join(TIMEOUT_S + 1.0)
        left = self.pending()
        if left:
            log.warning("model registry at %s: %d alias change(s) not made: %s", self.uri, len(left), left)

    # The sender thread ---------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(max(0.05, self._retry_at - time.monotonic()) if self.pending() else None)
            self._wake.clear()
            if self._stop.is_set() or time.monotonic() < self._retry_at:
                continue
            todo = self.pending()
            failed = False
            # Deletions first: a promoted candidate briefly carrying both aliases would be a lie.
            # One change failing (say, a version not registered yet) does not hold up the others.
            for change, run_id in sorted(todo.items(), key=lambda item: item[1] is not None):
                try:
                    self._apply(change, run_id)
                except TrackingError as exc:
                    self._failed(change, exc)
                    failed = True
                    continue
                except Exception as exc:  # an unexpected answer must not end the thread
                    self._failed(change, TrackingError(f"{type(exc).__name__}: {exc}"))
                    failed = True
                    continue
                with self._lock:
                    self._applied[change] = run_id
                    if change in self._pending and self._pending[change] == run_id:
                        del self._pending[change]  # unless a newer sync wants something else meanwhile
            if failed:
                self._retry_at = time.monotonic() + self._backoff
                self._backoff = min(self._backoff * 2, BACKOFF_MAX_S)
            else:
                self._backoff = 0.5

    def _apply(self, change: Change, run_id: str | None) -> None:
        model, alias = change
        if run_id is None:
            self.client.delete_alias(model, alias.value)
            log.info("model registry: %s has no %s", model, alias.value)
            return
        version = self.client.model_version_tagged(model, RUN_ID_TAG, run_id)
        if version is None:
            raise NotRegisteredYet(f"no version of {model} is tagged {RUN_ID_TAG}={run_id} yet")
        self.client.set_alias(model, alias.value, version)
        log.info("model registry: %s version %s (%s) is %s", model, version, run_id, alias.value)

    def _failed(self, change: Change, exc: TrackingError) -> None:
        """Count and log a failed change (it is retried after the backoff)."""
        if isinstance(exc, NotRegisteredYet):  # expected for a moment after a server starts
            log.debug("model registry: %s", exc)
            return
        self.failures += 1
        REGISTRY_FAILURES.inc()
        if time.monotonic() - self._last_warn >= WARN_EVERY_S:
            self._last_warn = time.monotonic()
            log.warning(
                "model registry at %s: %s %s: %s (will retry; %d failed so far)",
                self.uri,
                change[0],
                change[1].value,
                exc,
                self.failures,
            )
