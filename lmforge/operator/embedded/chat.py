"""`lmforge chat NAME`: a small interactive prompt against a served release's OpenAI-compatible API.

Plain `urllib` keeps the runner free of client libraries; the conversation is kept so the model sees
earlier turns (within its short context, older turns are dropped first).
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from typing import Any

MAX_TURNS = 6
"""Messages kept in the conversation (tiny models have tiny contexts)."""


def _request(
    url: str, body: dict[str, Any] | None = None, timeout: float = 120.0, api_key: str | None = None
) -> dict[str, Any]:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"}
    if api_key:  # a release with serving.apiKeySecret answers only with its key
        headers["Authorization"] = f"Bearer {api_key}"
    req = urllib.request.Request(url, data=data, headers=headers)
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        out: dict[str, Any] = json.loads(resp.read())
        return out


def served_model(endpoint: str, api_key: str | None = None) -> str:
    """The model id the server serves (first of `/v1/models`)."""
    return str(_request(endpoint.rstrip("/") + "/models", timeout=10.0, api_key=api_key)["data"][0]["id"])


def ask(
    endpoint: str, model: str, messages: list[dict[str, str]], max_tokens: int = 64, api_key: str | None = None
) -> str:
    """One chat completion; returns the assistant's text."""
    reply = _request(
        endpoint.rstrip("/") + "/chat/completions",
        {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0.0},
        api_key=api_key,
    )
    return str(reply["choices"][0]["message"]["content"])


def chat(endpoint: str, max_tokens: int = 64, api_key: str | None = None) -> int:
    """Read prompts from stdin until EOF or `/exit`; print each answer."""
    try:
        model = served_model(endpoint, api_key)
    except (OSError, KeyError, IndexError, ValueError) as exc:
        print(f"error: {endpoint} does not answer ({exc}); is `lmforge run` still serving it?", file=sys.stderr)
        return 1
    print(f"chatting with {model} at {endpoint} (Ctrl-D or /exit to leave)")
    messages: list[dict[str, str]] = []
    while True:
        try:
            prompt = input("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        if prompt in ("/exit", "/quit"):
            return 0
        if not prompt:
            continue
        messages = [*messages, {"role": "user", "content": prompt}][-MAX_TURNS:]
        try:
            answer = ask(endpoint, model, messages, max_tokens, api_key)
        except urllib.error.HTTPError as exc:
            print(f"error: {exc.code} {exc.read().decode(errors='replace')[:300]}", file=sys.stderr)
            messages.pop()
            continue
        except OSError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"{model}> {answer.strip()}")
        messages.append({"role": "assistant", "content": answer})
