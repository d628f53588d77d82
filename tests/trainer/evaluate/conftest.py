"""Shared fixtures: one tiny random Llama per session, and a scripted backend for tasks whose
scoring (not the model) is under test."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lmforge.trainer.evaluate.backend import GenerationRequest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from support.tiny import make_model

    return make_model(tmp_path_factory.mktemp("eval-model") / "model")


@pytest.fixture(scope="session")
def hf_backend(tiny_model: Path) -> Any:
    from lmforge.trainer.evaluate.hf import HFBackend

    return HFBackend(tiny_model, batch_size=8, device="cpu")


class ScriptedBackend:
    """Answers generation requests with a function of the prompt (a model with known outputs)."""

    description = "scripted"

    def __init__(self, answer: Callable[[str], str]) -> None:
        self.answer = answer
        self.requests: list[GenerationRequest] = []

    def loglikelihood(self, pairs: list[tuple[str, str]]) -> list[tuple[float, bool]]:
        raise NotImplementedError

    def text_nll(self, texts: list[str]) -> list[tuple[float, int]]:
        raise NotImplementedError

    def generate(self, requests: list[GenerationRequest], seed: int) -> list[str]:
        self.requests.extend(requests)
        return [self.answer(r.prompt) for r in requests]
