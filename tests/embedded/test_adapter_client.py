"""The local backend's adapter client against a recording stand-in for vLLM's endpoints: an adapter is
verified before the server is told to load it (a tampered file never reaches the server), the API key
goes with every call, and the server's refusal comes back with its reason."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lmforge.operator.local.adapters import AdapterClient
from lmforge.store import ArtifactCorrupt, ArtifactWriter, LocalStore


class Fake(http.server.BaseHTTPRequestHandler):
    calls: list[tuple[str, str, str | None, Any]] = []
    refuse: dict[str, tuple[int, str]] = {}

    def do_GET(self) -> None:
        self._answer(200, {"data": [{"id": "base", "parent": None}, {"id": "a", "parent": "base"}]})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Fake.calls.append((self.command, self.path, self.headers.get("Authorization"), body))
        code, message = Fake.refuse.get(self.path, (200, ""))
        self._answer(code, {"error": {"message": message}} if code != 200 else {})

    def _answer(self, code: int, body: dict[str, Any]) -> None:
        raw = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def endpoint() -> Iterator[str]:
    Fake.calls, Fake.refuse = [], {}
    server = http.server.HTTPServer(("127.0.0.1", 0), Fake)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def adapter(tmp: Path) -> str:
    src = tmp / "src"
    src.mkdir()
    (src / "adapter_config.json").write_text(json.dumps({"r": 8}))
    (src / "adapter_model.safetensors").write_bytes(b"weights" * 100)
    store = LocalStore(tmp / "store")
    w = ArtifactWriter(store, "alignmentjobs/default/a/run/adapter")
    w.add_dir(src)
    w.commit("adapter")
    return store.url("alignmentjobs/default/a/run/adapter")


def test_a_verified_copy_is_loaded_with_the_key_and_the_served_names_are_the_adapters(
    tmp_path: Path, endpoint: str
) -> None:
    uri = adapter(tmp_path)
    client = AdapterClient(endpoint, tmp_path / "cache", api_key="k3y")
    path = client.load("a", uri)
    assert (path / "adapter_model.safetensors").read_bytes() == b"weights" * 100
    assert Fake.calls == [("POST", "/v1/load_lora_adapter", "Bearer k3y", {"lora_name": "a", "lora_path": str(path)})]
    assert client.served() == ["a"]  # the base model (no parent) is not an adapter
    assert client.unload("a") is None
    assert Fake.calls[-1][1:] == ("/v1/unload_lora_adapter", "Bearer k3y", {"lora_name": "a"})


def test_a_tampered_adapter_never_reaches_the_server(tmp_path: Path, endpoint: str) -> None:
    uri = adapter(tmp_path)
    weights = Path(uri.removeprefix("file://")) / "adapter_model.safetensors"
    weights.write_bytes(b"evil" * 100)
    with pytest.raises(ArtifactCorrupt, match=r"adapter_model\.safetensors"):
        AdapterClient(endpoint, tmp_path / "cache").load("a", uri)
    assert Fake.calls == []


def test_the_servers_refusal_comes_back_with_its_reason_and_an_unknown_name_counts_as_unloaded(
    tmp_path: Path, endpoint: str
) -> None:
    uri = adapter(tmp_path)
    Fake.refuse = {
        "/v1/load_lora_adapter": (500, "LoRA rank 32 is greater than max_lora_rank 8."),
        "/v1/unload_lora_adapter": (404, "The lora adapter 'a' cannot be found."),
    }
    client = AdapterClient(endpoint, tmp_path / "cache")
    with pytest.raises(ValueError, match=r"HTTP 500: LoRA rank 32 is greater than max_lora_rank 8"):
        client.load("a", uri)
    assert client.unload("a") is None
    Fake.refuse["/v1/unload_lora_adapter"] = (500, "engine dead")
    assert "engine dead" in (client.unload("a") or "")
