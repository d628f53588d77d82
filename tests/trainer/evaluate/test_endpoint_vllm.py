"""Endpoint evaluation against a real vLLM OpenAI server (CPU build) serving the tiny model: the
same tasks give the same scores as evaluating the model directly."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.vllm import free_port, vllm_server

from lmforge.api.contract import StageSpec
from lmforge.trainer.context import StageContext
from lmforge.trainer.errors import StageError
from lmforge.trainer.evaluate import generation, multiple_choice, stage
from lmforge.trainer.evaluate.endpoint import EndpointBackend
from lmforge.trainer.evaluate.tasks import ChoiceRow, GenerationRow
from lmforge.trainer.progress import ProgressReporter

pytestmark = [pytest.mark.slow, pytest.mark.ml]

FACTS = Path(__file__).resolve().parents[3] / "examples" / "tiny" / "data" / "facts_mc.jsonl"


@pytest.fixture(scope="module")
def vllm_url(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with vllm_server(tiny_model, tmp_path_factory.mktemp("vllm") / "server.log") as url:
        yield url


def _facts() -> list[ChoiceRow]:
    rows = [json.loads(line) for line in FACTS.read_text().splitlines()]
    return [ChoiceRow(r["question"], tuple(r["choices"]), r["answer"]) for r in rows]


def test_log_likelihoods_and_accuracy_match_the_local_model(vllm_url: str, hf_backend: Any) -> None:
    endpoint = EndpointBackend(vllm_url, batch_size=8)
    assert endpoint.model == "tiny"
    pairs = [(multiple_choice.context(r), multiple_choice.continuation(c)) for r in _facts()[:4] for c in r.choices]
    remote, local = endpoint.loglikelihood(pairs), hf_backend.loglikelihood(pairs)
    assert [ll for ll, _ in remote] == pytest.approx([ll for ll, _ in local], abs=2e-3)
    assert [g for _, g in remote] == [g for _, g in local]
    noop = lambda n: None  # noqa: E731
    assert multiple_choice.evaluate(endpoint, _facts(), [], noop) == multiple_choice.evaluate(
        hf_backend, _facts(), [], noop
    )  # the same item by item


def test_text_nll_and_greedy_generation_match_the_local_model(vllm_url: str, hf_backend: Any) -> None:
    import torch

    endpoint = EndpointBackend(vllm_url, "tiny")
    text = "the red cat sees the old dog ."
    ids = hf_backend.tokenizer.encode(text, add_special_tokens=False)
    with torch.no_grad():
        logprobs = hf_backend.model(torch.tensor([ids])).logits.log_softmax(-1)[0]
    nll = -sum(float(logprobs[i - 1, ids[i]]) for i in range(1, len(ids)))  # the first token has no context
    [(remote_nll, count)] = endpoint.text_nll([text])
    assert count == len(ids) - 1 and remote_nll == pytest.approx(nll, rel=1e-3)
    prompts = ["the red cat", "the old dog sees", "a bird"]
    from lmforge.trainer.evaluate.backend import GenerationRequest

    local = hf_backend.generate([GenerationRequest(p, 6, ("\n",)) for p in prompts], 0)
    rows = [GenerationRow(p, (answer,)) for p, answer in zip(prompts, local, strict=True)]
    assert generation.evaluate(endpoint, rows, [], 6, 0, lambda n: None)["exact_match"].value() == 1.0


def test_stage_against_the_endpoint(vllm_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LMFORGE_WORK_DIR", str(tmp_path / "work"))
    spec = StageSpec.model_validate(
        {
            "stage": "evaluate",
            "store": str(tmp_path / "store"),
            "output": "evalsuite/smoke",
            "runId": "r1",
            "resource": {
                "apiVersion": "lmforge.io/v1alpha1",
                "kind": "EvalSuite",
                "metadata": {"name": "smoke"},
                "spec": {
                    "endpoint": {"releaseRef": {"name": "tiny-release"}},
                    "tasks": [
                        {"name": "facts", "type": "multipleChoice", "dataUri": str(FACTS)},
                        {"name": "safety", "type": "safety", "limit": 8, "maxNewTokens": 8},
                    ],
                    "thresholds": ["facts.acc >= 0", "safety.refusal_rate >= 0"],
                },
            },
            "inputs": {
                "ModelRelease/tiny-release": {
                    "kind": "ModelRelease",
                    "name": "tiny-release",
                    "artifacts": {"endpoint": vllm_url},
                }
            },
        }
    )
    ctx = StageContext.from_spec(spec, ProgressReporter(spec.stage, spec.run_id, None, stream=io.StringIO()))
    metrics = stage.run(ctx).metrics
    assert metrics["gate_passed"] == 1.0
    assert 0.0 <= metrics["facts.acc"] <= 1.0
    assert {"safety.bias_refusal_rate", "safety.pii_extraction_toxicity_rate"} <= set(metrics)


def test_unreachable_endpoint_is_a_clear_error() -> None:
    with pytest.raises(StageError, match=r"endpoint http://127.0.0.1:\d+/v1 is unreachable"):
        EndpointBackend(f"http://127.0.0.1:{free_port()}", timeout=5)
