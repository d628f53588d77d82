"""Loading LoRA adapters into, and unloading them from, a running local vLLM server.

vLLM started with `--enable-lora` and `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True` (the serve stage does
both when a release allows adapters) takes `POST /v1/load_lora_adapter {"lora_name", "lora_path"}`
and `POST /v1/unload_lora_adapter {"lora_name"}`, and lists each adapter in `GET /v1/models` as a
model whose `parent` is the base. The adapter is downloaded from the store first and every file is
checked against its manifest's sha256 (the same `download_artifact` the serve stage's copy uses), so
the server only ever reads a complete, verified copy.
"""

from __future__ import annotations

import hashlib
import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.store import download_artifact, open_store, split_uri

TIMEOUT_S = 60.0
"""Per request: loading reads the adapter's weights into the server."""


@dataclass(frozen=True)
class AdapterClient:
    endpoint: str
    """The server's OpenAI base URL, `http://host:port/v1`."""
    cache: Path
    """Where verified adapter copies are kept (one directory per artifact URI)."""
    api_key: str | None = None

    def served(self) -> list[str]:
        """The adapters the server answers to (its models that have a parent)."""
        data = self._call("GET", "/models")
        return [m["id"] for m in data.get("data", []) if m.get("parent")]

    def load(self, name: str, uri: str) -> Path:
        """Download and verify the adapter at `uri`, then load it as model `name`; ValueError with the
        server's reason when it refuses (rank too large, not an adapter of this base, …)."""
        path = self.fetch(uri)
        self._call("POST", "/load_lora_adapter", {"lora_name": name, "lora_path": str(path)})
        return path

    def unload(self, name: str) -> str | None:
        """Unload adapter `name`; None when it is gone (also when it was not loaded), else why not."""
        try:
            self._call("POST", "/unload_lora_adapter", {"lora_name": name})
        except ValueError as exc:
            return None if "404" in str(exc) else str(exc)
        except OSError as exc:
            return str(exc)
        return None

    def fetch(self, uri: str) -> Path:
        """A verified local copy of the adapter artifact (files already there with the right hash
        are kept)."""
        root, leaf = split_uri(uri)
        dest = self.cache / hashlib.sha256(uri.encode()).hexdigest()[:24]
        download_artifact(open_store(root), leaf, dest, verify=True)
        return dest

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.endpoint.rstrip("/") + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raise ValueError(f"{method} {path}: HTTP {exc.code}: {_reason(exc.read())}") from None
        try:
            return json.loads(raw) if raw.strip()[:1] in (b"{", b"[") else {}
        except ValueError:
            return {}


def _reason(raw: bytes) -> str:
    """vLLM's `{"error": {"message": …}}`, else the body's start."""
    try:
        return str(json.loads(raw)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return raw.decode(errors="replace")[:300]
