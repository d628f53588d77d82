"""The post-deploy smoke test: one short generation through the public API, with its latency."""

from __future__ import annotations

import time
import urllib.error

from lmforge.trainer.errors import StageError
from lmforge.trainer.serve.launcher import VllmServer

PROMPT = "Hello"


def smoke(server: VllmServer, max_tokens: int = 8) -> dict[str, float]:
    """Generate `max_tokens` greedily; `smoke_tokens` and `smoke_latency_s`, or a StageError."""
    start = time.monotonic()
    try:
        out = server.request(
            "/v1/completions",
            {"model": server.model_name, "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0},
        )
    except (urllib.error.URLError, OSError) as exc:
        raise StageError(f"smoke test: /v1/completions failed: {exc}") from None
    tokens = int((out.get("usage") or {}).get("completion_tokens", 0))
    if not out.get("choices") or tokens == 0:
        raise StageError(f"smoke test: no tokens generated: {out}")
    return {"smoke_tokens": float(tokens), "smoke_latency_s": time.monotonic() - start}
