"""What every task needs from a model, whether a local Hugging Face directory (`hf.HFBackend`) or an
OpenAI-compatible endpoint (`endpoint.EndpointBackend`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class GenerationRequest:
    """One completion to produce; `chat` wraps the prompt as a user turn when the model has a chat
    template (safety prompts), otherwise the prompt is continued as plain text."""

    prompt: str
    max_new_tokens: int
    stop: tuple[str, ...] = ()
    temperature: float = 0.0
    chat: bool = False


class Backend(Protocol):
    """A model the tasks can score and sample."""

    description: str
    """For results.json (`hf:/path` or the endpoint URL and model)."""

    def loglikelihood(self, pairs: list[tuple[str, str]]) -> list[tuple[float, bool]]:
        """For each (context, continuation): log P(continuation | context) in nats, and whether the
        continuation is the greedy decoding."""
        ...

    def text_nll(self, texts: list[str]) -> list[tuple[float, int]]:
        """Per text: its summed negative log-likelihood (nats) and the number of tokens it covers."""
        ...

    def generate(self, requests: list[GenerationRequest], seed: int) -> list[str]:
        """One completion per request, stop sequences removed."""
        ...
