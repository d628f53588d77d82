"""An OpenAI-compatible HTTP endpoint (e.g. the vLLM service of a ModelRelease) as a `Backend`.

Log-likelihoods come from `/v1/completions` with `echo` and `logprobs`: the server returns the
log-probability of every prompt token, and the continuation's tokens are those starting at or after
the context's length (`text_offset`). Servers without prompt log-probabilities can still run the
generation, code and safety tasks; multiple-choice and perplexity tasks then fail with a clear error.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Any

from lmforge.trainer.errors import InvalidInput, StageError
from lmforge.trainer.evaluate.backend import GenerationRequest

API_KEY_ENV = "LMFORGE_ENDPOINT_API_KEY"
"""Where the endpoint's API key arrives (the operator maps `apiKeySecret` to it)."""


class EchoUnsupported(InvalidInput):
    """The server does not return prompt log-probabilities."""


def base_url(url: str) -> str:
    """`http://host:8000` or `…/v1/` → `http://host:8000/v1`."""
    url = url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


class EndpointBackend:
    """Completions and chat completions over plain HTTP (urllib), prompts batched per request."""

    def __init__(
        self,
        url: str,
        model: str | None = None,
        *,
        batch_size: int = 16,
        timeout: float = 300.0,
        api_key: str | None = None,
    ) -> None:
        self.base = base_url(url)
        self.batch_size = batch_size
        self.timeout = timeout
        self.api_key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
        if model is None:
            served = self._call("GET", "/models").get("data") or []
            if not served:
                raise StageError(f"endpoint {self.base}: /models lists no model")
            model = str(served[0]["id"])
        self.model = model
        self.description = f"{self.base} (model {model})"

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                out: dict[str, Any] = json.loads(response.read())
                return out
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:300].decode("utf-8", "replace")
            raise StageError(
                f"endpoint {self.base}{path}: HTTP {exc.code}: {detail}", retryable=exc.code >= 500
            ) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise StageError(f"endpoint {self.base} is unreachable: {reason}") from None

    def _echo(self, prompts: list[str]) -> list[dict[str, Any]]:
        """Per prompt: `tokens`, `token_logprobs`, `top_logprobs`, `text_offset` of the echoed prompt."""
        try:
            reply = self._call(
                "POST",
                "/completions",
                {
                    "model": self.model,
                    "prompt": prompts,
                    "max_tokens": 1,
                    "echo": True,
                    "logprobs": 1,
                    "temperature": 0.0,
                },
            )
        except StageError as exc:
            if exc.retryable:
                raise
            raise EchoUnsupported(
                f"endpoint {self.base} rejects echo+logprobs completions ({exc}); only "
                f"generation, code and safety tasks can run against it"
            ) from None
        choices = sorted(reply.get("choices", []), key=lambda c: c.get("index", 0))
        out = [c.get("logprobs") or {} for c in choices]
        if len(out) != len(prompts) or any(not lp.get("token_logprobs") or "text_offset" not in lp for lp in out):
            raise EchoUnsupported(
                f"endpoint {self.base} returns no prompt log-probabilities; "
                "multiple-choice and perplexity tasks need them"
            )
        return out

    def loglikelihood(self, pairs: list[tuple[str, str]]) -> list[tuple[float, bool]]:
        results = []
        for start in range(0, len(pairs), self.batch_size):
            batch = pairs[start : start + self.batch_size]
            for (context, cont), lp in zip(batch, self._echo([c + x for c, x in batch]), strict=True):
                begin, end = len(context), len(context) + len(cont)
                total, greedy = 0.0, True
                for tok, logp, top, offset in zip(
                    lp["tokens"],
                    lp["token_logprobs"],
                    lp.get("top_logprobs") or [None] * len(lp["tokens"]),
                    lp["text_offset"],
                    strict=False,
                ):
                    if begin <= offset < end and logp is not None:
                        total += float(logp)
                        if top:
                            greedy = greedy and max(top, key=top.get) == tok
                results.append((total, greedy))
        return results

    def text_nll(self, texts: list[str]) -> list[tuple[float, int]]:
        out: list[tuple[float, int]] = []
        for start in range(0, len(texts), self.batch_size):
            batch = texts[start : start + self.batch_size]
            for text, lp in zip(batch, self._echo(batch), strict=True):
                nll, count = 0.0, 0
                for logp, offset in zip(lp["token_logprobs"], lp["text_offset"], strict=False):
                    if offset < len(text) and logp is not None:  # the first token has no context
                        nll -= float(logp)
                        count += 1
                out.append((nll, count))
        return out

    def _chat(self, request: GenerationRequest) -> str:
        try:
            reply = self._call(
                "POST",
                "/chat/completions",
                {
                    "model": self.model,
                    "messages": [{"role": "user", "content": request.prompt}],
                    "max_tokens": request.max_new_tokens,
                    "temperature": request.temperature,
                },
            )
        except StageError as exc:
            if exc.retryable:
                raise
            return self._complete([request])[0]  # no chat template: continue the raw prompt
        return str(reply["choices"][0]["message"].get("content") or "")

    def _complete(self, requests: list[GenerationRequest]) -> list[str]:
        first = requests[0]
        body: dict[str, Any] = {
            "model": self.model,
            "prompt": [r.prompt for r in requests],
            "max_tokens": first.max_new_tokens,
            "temperature": first.temperature,
        }
        if first.stop:
            body["stop"] = list(first.stop)
        choices = sorted(self._call("POST", "/completions", body)["choices"], key=lambda c: c.get("index", 0))
        return [str(c.get("text") or "") for c in choices]

    def generate(self, requests: list[GenerationRequest], seed: int) -> list[str]:
        # `seed` is not sent: one seed for a batch of identical prompts would make identical samples.
        out: list[str] = []
        for start in range(0, len(requests), self.batch_size):
            batch = requests[start : start + self.batch_size]
            if batch[0].chat:
                out.extend(self._chat(r) for r in batch)
                continue
            # One request per shared (max_tokens, temperature, stop); the tasks never mix them.
            out.extend(self._complete(batch))
        return out
