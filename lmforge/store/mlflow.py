"""A minimal MLflow REST client (the documented `/api/2.0/mlflow` API) on the standard library.

Why not the `mlflow` package: a stage pod needs only a handful of calls, and `mlflow`/`mlflow-skinny`
pin versions of pyarrow and cachetools that conflict with the trainer's (see the README). Every call
has a short timeout; errors are raised as `TrackingError` for the caller's retry logic.

It lives in the store layer (stdlib only) because both sides use it: the stages' trackers
(`lmforge.trainer.tracking.mlflow`) log runs and register model versions; the operator and the
embedded runner (`lmforge.operator.aliases`) move the registry aliases as a rollout proceeds.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

TIMEOUT_S = float(os.environ.get("LMFORGE_TRACKING_TIMEOUT", "10"))
"""Seconds one request may take before it counts as failed."""


class TrackingError(Exception):
    """A request failed; `code` is MLflow's error code (e.g. `RESOURCE_ALREADY_EXISTS`) when it answered."""

    def __init__(self, message: str, code: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


class MlflowRest:
    """Calls against one tracking server (`http(s)://host:port[/prefix]`)."""

    def __init__(self, uri: str, timeout: float = TIMEOUT_S) -> None:
        self.base = uri.rstrip("/")
        self.timeout = timeout
        self._headers = {"Content-Type": "application/json"}
        token = os.environ.get("MLFLOW_TRACKING_TOKEN")
        if token:
            self._headers["Authorization"] = f"Bearer {token}"

    def call(
        self, method: str, path: str, body: dict[str, Any] | None = None, query: dict[str, str] | None = None
    ) -> dict[str, Any]:
        url = f"{self.base}/api/2.0/mlflow/{path}"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        data = None if body is None else json.dumps(body).encode()
        return self._send(urllib.request.Request(url, data=data, method=method, headers=self._headers))

    def _send(self, req: urllib.request.Request) -> dict[str, Any]:
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            text = exc.read().decode(errors="replace")
            try:
                err = json.loads(text)
            except ValueError:
                err = {}
            raise TrackingError(
                f"{req.get_method()} {req.full_url}: HTTP {exc.code}: {err.get('message') or text[:200]}",
                err.get("error_code"),
                exc.code,
            ) from None
        except (OSError, ValueError) as exc:  # refused, reset, timed out, bad URL
            raise TrackingError(f"{req.get_method()} {req.full_url}: {exc}") from None
        out: dict[str, Any] = json.loads(raw) if raw.strip() else {}
        return out

    # Tracking --------------------------------------------------------------------------------------

    def experiment_id(self, name: str) -> str:
        """The experiment's id, creating it when missing."""
        try:
            found = self.call("GET", "experiments/get-by-name", query={"experiment_name": name})
            return str(found["experiment"]["experiment_id"])
        except TrackingError as exc:
            if exc.code != "RESOURCE_DOES_NOT_EXIST":
                raise
        try:
            return str(self.call("POST", "experiments/create", {"name": name})["experiment_id"])
        except TrackingError as exc:
            if exc.code != "RESOURCE_ALREADY_EXISTS":  # created meanwhile by another stage
                raise
            return self.experiment_id(name)

    def search_runs(self, experiment_ids: list[str], filter_string: str, max_results: int = 10) -> list[dict[str, Any]]:
        body = {
            "experiment_ids": experiment_ids,
            "filter": filter_string,
            "max_results": max_results,
            "order_by": ["attributes.start_time DESC"],
        }
        runs: list[dict[str, Any]] = self.call("POST", "runs/search", body).get("runs", [])
        return runs

    def create_run(self, experiment_id: str, name: str, tags: dict[str, str], start_ms: int) -> dict[str, Any]:
        body = {
            "experiment_id": experiment_id,
            "run_name": name,
            "start_time": start_ms,
            "tags": [{"key": k, "value": v} for k, v in tags.items()],
        }
        run: dict[str, Any] = self.call("POST", "runs/create", body)["run"]
        return run

    def log_batch(
        self,
        run_id: str,
        *,
        metrics: list[dict[str, Any]] | None = None,
        params: dict[str, str] | None = None,
        tags: dict[str, str] | None = None,
    ) -> None:
        self.call(
            "POST",
            "runs/log-batch",
            {
                "run_id": run_id,
                "metrics": metrics or [],
                "params": [{"key": k, "value": v} for k, v in (params or {}).items()],
                "tags": [{"key": k, "value": v} for k, v in (tags or {}).items()],
            },
        )

    def update_run(self, run_id: str, status: str, end_ms: int | None = None) -> None:
        body: dict[str, Any] = {"run_id": run_id, "status": status}
        if end_ms is not None:
            body["end_time"] = end_ms
        self.call("POST", "runs/update", body)

    def put_artifact(self, artifact_uri: str, path: str, data: bytes) -> None:
        """Upload through the server's artifact proxy (`mlflow server` serves artifacts by default)."""
        if not artifact_uri.startswith("mlflow-artifacts:"):
            raise TrackingError(f"artifact root {artifact_uri} is not proxied by the server (mlflow-artifacts:)")
        rest = urllib.parse.urlparse(artifact_uri).path.lstrip("/")
        url = f"{self.base}/api/2.0/mlflow-artifacts/artifacts/{urllib.parse.quote(rest)}/{urllib.parse.quote(path)}"
        self._send(
            urllib.request.Request(
                url, data=data, method="PUT", headers={**self._headers, "Content-Type": "application/octet-stream"}
            )
        )

    # Model registry --------------------------------------------------------------------------------

    def ensure_registered_model(self, name: str) -> None:
        try:
            self.call("POST", "registered-models/create", {"name": name})
        except TrackingError as exc:
            if exc.code != "RESOURCE_ALREADY_EXISTS":
                raise

    def model_version_of_run(self, name: str, run_id: str) -> str | None:
        found = self.call(
            "GET", "model-versions/search", query={"filter": f"name={quote(name)} and run_id={quote(run_id)}"}
        )
        versions = found.get("model_versions", [])
        return str(versions[0]["version"]) if versions else None

    def create_model_version(
        self, name: str, source: str, run_id: str, tags: dict[str, str], description: str = ""
    ) -> str:
        body = {
            "name": name,
            "source": source,
            "run_id": run_id,
            "description": description,
            "tags": [{"key": k, "value": v} for k, v in tags.items()],
        }
        return str(self.call("POST", "model-versions/create", body)["model_version"]["version"])

    def model_version_tagged(self, name: str, key: str, value: str) -> str | None:
        """The newest version of `name` whose tag `key` is `value` (e.g. `lmforge.run_id`), or None."""
        found = self.call(
            "GET", "model-versions/search", query={"filter": f"name={quote(name)} and tags.`{key}` = {quote(value)}"}
        )
        versions = [int(v["version"]) for v in found.get("model_versions", [])]
        return str(max(versions)) if versions else None

    def set_alias(self, name: str, alias: str, version: str) -> None:
        """Point `alias` at `version`; MLflow moves it off whichever version had it."""
        self.call("POST", "registered-models/alias", {"name": name, "alias": alias, "version": version})

    def delete_alias(self, name: str, alias: str) -> None:
        """Remove `alias` from the model (whichever version has it); an absent alias or model is no error."""
        try:
            self.call("DELETE", "registered-models/alias", {"name": name, "alias": alias})
        except TrackingError as exc:
            if exc.code != "RESOURCE_DOES_NOT_EXIST":
                raise


def quote(value: str) -> str:
    """A string literal of MLflow's search filter syntax."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
