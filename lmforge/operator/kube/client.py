"""A small async REST client for the few calls the operator makes: server-side apply, delete,
status merge-patch, list, create. Why not the `kubernetes` package's generated API: it is
synchronous (a thread per call) and has no server-side apply for arbitrary kinds; the credentials,
though, are loaded with it, exactly as kopf does, so both talk to the cluster as the same identity.

Transient failures (connection errors, 409 conflicts, 429, 5xx) are retried with exponential backoff.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from typing import Any
from urllib.parse import quote

import aiohttp

from lmforge.operator.kube.meta import FIELD_MANAGER

log = logging.getLogger(__name__)

PLURALS = {
    "ConfigMap": "configmaps",
    "Service": "services",
    "Event": "events",
    "Pod": "pods",
    "Secret": "secrets",
    "Job": "jobs",
    "Deployment": "deployments",
    "PodGroup": "podgroups",
    "NetworkPolicy": "networkpolicies",
    "HTTPRoute": "httproutes",
    "Dataset": "datasets",
    "PretrainJob": "pretrainjobs",
    "AlignmentJob": "alignmentjobs",
    "EvalSuite": "evalsuites",
    "ModelRelease": "modelreleases",
}
RETRY_STATUSES = frozenset({409, 429, 500, 502, 503, 504})


class ApiError(RuntimeError):
    """The API server refused a request for good (after retries, or a non-retryable status)."""

    def __init__(self, status: int, method: str, path: str, body: Any) -> None:
        reason = body.get("message") if isinstance(body, dict) else str(body)[:300]
        super().__init__(f"{method} {path}: HTTP {status}: {reason}")
        self.status = status
        self.body = body


def path_of(api_version: str, kind: str, namespace: str | None, name: str | None = None) -> str:
    """REST path of a collection or an object."""
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    ns = f"/namespaces/{namespace}" if namespace else ""
    tail = f"/{quote(name)}" if name else ""
    return f"{base}{ns}/{PLURALS[kind]}{tail}"


class KubeClient:
    """One aiohttp session to the API server."""

    def __init__(self, host: str, token: str | None, ssl_context: ssl.SSLContext | bool, attempts: int = 6) -> None:
        self.host = host.rstrip("/")
        self.token = token
        self.ssl_context = ssl_context
        self.attempts = attempts
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def from_environment(cls) -> KubeClient:
        """In-cluster service account, else $KUBECONFIG / ~/.kube/config (as kopf logs in)."""
        import kubernetes.client
        import kubernetes.config

        try:
            kubernetes.config.load_incluster_config()
        except kubernetes.config.ConfigException:
            kubernetes.config.load_kube_config()
        cfg = kubernetes.client.Configuration.get_default_copy()
        header = cfg.get_api_key_with_prefix("BearerToken") or cfg.get_api_key_with_prefix("authorization")
        token = header.split(" ", 1)[-1] if header else None
        ctx: ssl.SSLContext | bool = False
        if cfg.verify_ssl:
            ctx = (
                ssl.create_default_context(cafile=cfg.ssl_ca_cert) if cfg.ssl_ca_cert else ssl.create_default_context()
            )
            if cfg.cert_file:
                ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
        return cls(cfg.host, token, ctx)

    async def _sess(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(ssl=self.ssl_context, limit=32)
            self._session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        params: dict[str, str] | None = None,
        ok_missing: bool = False,
    ) -> Any:
        """One call with retries; returns the decoded JSON (None for a tolerated 404)."""
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body)
        delay = 0.1
        for attempt in range(self.attempts):
            try:
                session = await self._sess()
                async with session.request(method, self.host + path, data=data, headers=headers, params=params) as resp:
                    text = await resp.text()
                    status = resp.status
            except (TimeoutError, aiohttp.ClientError) as exc:
                if attempt == self.attempts - 1:
                    raise ApiError(0, method, path, repr(exc)) from exc
                log.warning("%s %s: %r; retrying in %.1f s", method, path, exc, delay)
            else:
                payload: Any = json.loads(text) if text.startswith("{") else text
                if status < 300:
                    return payload
                if status == 404 and ok_missing:
                    return None
                if status not in RETRY_STATUSES or attempt == self.attempts - 1:
                    raise ApiError(status, method, path, payload)
                log.info("%s %s: HTTP %d; retrying in %.1f s", method, path, status, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
        raise AssertionError("unreachable")

    async def apply(self, obj: dict[str, Any]) -> Any:
        """Server-side apply (idempotent; `force` takes over fields another manager last set)."""
        meta = obj["metadata"]
        path = path_of(obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"])
        return await self.request(
            "PATCH",
            path,
            obj,
            content_type="application/apply-patch+yaml",
            params={"fieldManager": FIELD_MANAGER, "force": "true"},
        )

    async def delete(self, api_version: str, kind: str, namespace: str, name: str) -> bool:
        """Delete in the background (the garbage collector removes dependents); False if absent."""
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
        gone = await self.request("DELETE", path_of(api_version, kind, namespace, name), body, ok_missing=True)
        return gone is not None

    async def scale(self, namespace: str, name: str, replicas: int) -> Any:
        """Set a Deployment's replicas (merge patch: leaves every field applied by the operator as it is)."""
        path = path_of("apps/v1", "Deployment", namespace, name)
        return await self.request(
            "PATCH",
            path,
            {"spec": {"replicas": replicas}},
            content_type="application/merge-patch+json",
            params={"fieldManager": FIELD_MANAGER},
            ok_missing=True,
        )

    async def patch_status(self, api_version: str, kind: str, namespace: str, name: str, status: dict[str, Any]) -> Any:
        """Merge-patch `.status` through the status subresource."""
        path = path_of(api_version, kind, namespace, name) + "/status"
        return await self.request(
            "PATCH", path, {"status": status}, content_type="application/merge-patch+json", ok_missing=True
        )

    async def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """One object, or None when it does not exist."""
        found = await self.request("GET", path_of(api_version, kind, namespace, name), ok_missing=True)
        return found if isinstance(found, dict) else None

    async def list(self, api_version: str, kind: str, namespace: str, selector: str) -> list[dict[str, Any]]:
        body = await self.request("GET", path_of(api_version, kind, namespace), params={"labelSelector": selector})
        return list(body.get("items") or [])

    async def create(self, obj: dict[str, Any]) -> Any:
        meta = obj["metadata"]
        return await self.request("POST", path_of(obj["apiVersion"], obj["kind"], meta.get("namespace")), obj)
