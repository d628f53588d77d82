"""`lmforge chat` against a release with `serving.apiKeySecret` sends the key (issue #14: it sent
none, so a keyed server answered 401). A loopback stand-in for vLLM's API checks the header."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from lmforge.operator.embedded.chat import ask, served_model

KEY = "s3cr3t"


class _Api(http.server.BaseHTTPRequestHandler):
    def _answer(self, body: dict[str, Any]) -> None:
        if self.headers.get("Authorization") != f"Bearer {KEY}":
            self.send_response(401)
            self.end_headers()
            return
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._answer({"data": [{"id": "tiny"}]})

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._answer({"choices": [{"message": {"content": "Tix."}}]})

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def endpoint() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Api)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()


def test_chat_sends_the_release_api_key(endpoint: str) -> None:
    with pytest.raises(OSError, match="401"):
        served_model(endpoint)  # without the key a keyed server refuses
    assert served_model(endpoint, KEY) == "tiny"
    assert ask(endpoint, "tiny", [{"role": "user", "content": "capital?"}], api_key=KEY) == "Tix."
