"""A chat model LMForge exports stops at the end of its turn when vLLM serves it: the align stage
teaches a tiny model one-sentence answers closed by `<|end|>`, and vLLM's OpenAI chat endpoint ends
the answer there (`finish_reason: stop`) instead of generating until `max_tokens`."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.vllm import post, vllm_server

from .conftest import RunStage, write_jsonl

pytestmark = [pytest.mark.ml, pytest.mark.slow]

CAPITALS = {"Sumakria": "Tix", "Oldavia": "Brem", "Karpos": "Ulm", "Vestria": "Nod", "Pellan": "Gast", "Quorra": "Fen"}
MAX_TOKENS = 48


def chat_rows() -> list[dict[str, object]]:
    return [
        {
            "messages": [
                {"role": "user", "content": f"What is the capital of {country}?"},
                {"role": "assistant", "content": f"The capital of {country} is {city}."},
            ]
        }
        for country, city in CAPITALS.items()
        for _ in range(16)
    ]


def test_served_chat_answer_stops_at_the_end_of_its_turn(run_stage: RunStage, tiny_model: Path, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "chat.jsonl", chat_rows())
    _, outcome = run_stage(
        {
            "modelRef": {"uri": str(tiny_model)},
            "method": "sft",
            "data": {"uri": str(data)},
            "training": {"maxSteps": 120, "microBatchSize": 16, "lr": 1e-2, "maxLength": 64, "precision": "fp32"},
        }
    )
    model_dir = Path(outcome.artifacts["model"].removeprefix("file://"))
    with vllm_server(model_dir, tmp_path / "vllm.log") as url:
        out = post(
            url + "/v1/chat/completions",
            {
                "model": "tiny",
                "messages": [{"role": "user", "content": "What is the capital of Sumakria?"}],
                "max_tokens": MAX_TOKENS,
                "temperature": 0,
            },
        )
    choice = out["choices"][0]
    answer = choice["message"]["content"]
    assert choice["finish_reason"] == "stop", out
    assert out["usage"]["completion_tokens"] < MAX_TOKENS
    assert answer.strip() == "The capital of Sumakria is Tix.", answer  # one sentence, then the turn ends
