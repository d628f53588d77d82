"""GRPO with vLLM rollouts on vLLM's CPU build: trl's colocated engine with LMForge's weight sync
(`lmforge/trainer/align/vllm_cpu.py`), in the stage, on the toy sums of `test_group_rl.py`.

What could go wrong and is checked: trl's own sync fails on the CPU build (so a run that falls back
to it dies); a sync that "succeeds" but leaves stale weights in the engine (the tied LM head keeps
its old oneDNN copy unless it is repacked) would sample from the wrong policy. So the test counts
the syncs, checks the engine runs in the run's precision (float32), and afterwards pushes perturbed
weights once more and compares the engine's greedy tokens and their log-probabilities with
transformers' on the same weights.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import RunStage
from .test_group_rl import grpo_sums_learn

pytestmark = [pytest.mark.ml, pytest.mark.usefixtures("reward_module", "engine_cleanup")]


@pytest.fixture
def engine_cleanup() -> Iterator[None]:
    """Leave the pytest process as it was. An engine in this process initialises torch.distributed
    (a TCP store listening on MASTER_PORT), and trl writes RANK, WORLD_SIZE, MASTER_ADDR and
    MASTER_PORT into os.environ; left behind, a later test's subprocess inherits them and its own
    process group fails with EADDRINUSE (seen in a CI rehearsal: test_distributed.py). In a pod the
    stage's process ends with the run, so this is the tests' concern only. The store outlives the
    test (vLLM keeps its process groups; tearing them down broke the next engine), so it gets a port of its own: not the
    MASTER_PORT (29500) an earlier test may have left in the environment."""
    saved = dict(os.environ)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        os.environ["MASTER_PORT"] = str(s.getsockname()[1])
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture
def reward_module(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).parent))


TIE_TOLERANCE = 1e-3
"""How far (in logits) below transformers' best token the engine's greedy token may be: a near-tie
that oneDNN's and torch's fp32 sums break differently (seen on an AVX-512 machine: the two greedy
texts part at the 7th token of a perturbed model). A stale layer puts the engine's tokens whole
logits below the best (`test_the_sync_repacks_a_tied_lm_head` checks that this tolerance still
catches one)."""


def shortfalls(
    model: Any, prompts: list[list[int]], engine: list[tuple[list[int], list[float]]]
) -> tuple[list[float], list[float]]:
    """For each token the engine chose greedily, with transformers reading the engine's text (teacher
    forcing, nothing masked): transformers' best logit minus that token's logit, and how far the
    engine's log-probability of the token is from transformers' (a bf16 engine on fp32 weights was
    up to 0.08 off, a float32 one 1e-5)."""
    import torch

    model.eval()
    gaps: list[float] = []
    drifts: list[float] = []
    with torch.no_grad():
        for ids, (chosen, logprobs) in zip(prompts, engine, strict=True):
            logits = model(torch.tensor([ids + chosen])).logits[0, len(ids) - 1 : -1]
            picked = logits.gather(1, torch.tensor(chosen).unsqueeze(1)).squeeze(1)
            gaps += (logits.max(dim=1).values - picked).tolist()
            ours = torch.log_softmax(logits, dim=1).gather(1, torch.tensor(chosen).unsqueeze(1)).squeeze(1)
            drifts += (torch.tensor(logprobs) - ours).abs().tolist()
    return gaps, drifts


def assert_engine_matches(llm: Any, model: Any, prompts: list[list[int]], tokens: int = 12) -> None:
    """The engine's greedy tokens are transformers' greedy tokens, up to fp32 near-ties, and their
    log-probabilities are transformers'."""
    gaps, drifts = shortfalls(model, prompts, greedy_vllm(llm, prompts, tokens))
    assert len(gaps) == tokens * len(prompts)
    assert max(gaps) <= TIE_TOLERANCE, gaps
    assert max(drifts) <= TIE_TOLERANCE, drifts


def greedy_vllm(llm: Any, prompts: list[list[int]], tokens: int) -> list[tuple[list[int], list[float]]]:
    """The engine's greedy tokens for each prompt, with their log-probabilities."""
    from vllm import SamplingParams

    params = SamplingParams(temperature=0, max_tokens=tokens, ignore_eos=True, logprobs=0)
    outs = llm.generate([{"prompt_token_ids": ids} for ids in prompts], params, use_tqdm=False)
    return [
        (
            list(o.outputs[0].token_ids),
            [lp[t].logprob for t, lp in zip(o.outputs[0].token_ids, o.outputs[0].logprobs, strict=True)],
        )
        for o in outs
    ]


def test_grpo_learns_with_vllm_rollouts_on_the_cpu(
    run_stage: RunStage, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("vllm")
    from lmforge.trainer.align import vllm_cpu

    generations: list[Any] = []
    syncs: list[int] = []
    real_use, real_reload = vllm_cpu.use_reload_sync, vllm_cpu.reload_into

    sampled: list[Any] = []  # each rollout call's sampling settings, and the texts the engine decoded
    engine_texts: list[str] = []

    def use(generation: Any) -> None:
        generations.append(generation)
        real_use(generation)
        real_generate = generation.llm.generate

        def generate(*args: Any, **kwargs: Any) -> Any:
            sampled.append(kwargs["sampling_params"])
            outs = real_generate(*args, **kwargs)
            engine_texts.extend(c.text for o in outs for c in o.outputs)
            return outs

        generation.llm.generate = generate

    def reload(llm: Any, named: Any) -> None:
        syncs.append(1)
        real_reload(llm, named)

    monkeypatch.setattr(vllm_cpu, "use_reload_sync", use)
    monkeypatch.setattr(vllm_cpu, "reload_into", reload)
    outcome = grpo_sums_learn(run_stage, tiny_model, tmp_path, "vllm", "grpo-vllm")

    # the rollouts came from the engine, which got the weights before each step's rollouts
    (generation,) = generations
    assert str(generation.llm.llm_engine.model_config.dtype) == "torch.float32"  # the run's precision
    assert len(syncs) == 30, len(syncs)
    # The engine decoded nothing (`VLLM_SAMPLING`), yet the rewards rose: trl decodes the completions
    # from their ids itself, so skipping the engine's text costs the run nothing.
    assert len(sampled) == 30 and all(p.detokenize is False and p.logprobs == 0 for p in sampled), sampled[:1]
    assert len(engine_texts) >= 30 and set(engine_texts) == {""}, engine_texts[:3]
    del generation.llm.generate  # the engine's own method again
    # The last update is small (lr 3e-3), too small for greedy tokens to show a stale layer. So every
    # weight of the trained model is moved by noise and pushed: the engine must then answer as
    # transformers does with the same weights (a stale tied LM head fails this).
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    exported = outcome.artifacts["model"].removeprefix("file://")
    model = AutoModelForCausalLM.from_pretrained(exported)
    tok = AutoTokenizer.from_pretrained(exported)
    prompts = [tok(f"{w} : {a} + 1 =", add_special_tokens=False)["input_ids"] for w, a in [("cat", 1), ("tree", 3)]]
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.2)
    generation.model = model  # what trl reads the weights from
    generation.sync_weights()
    assert_engine_matches(generation.llm, model, prompts)


def test_the_sync_repacks_a_tied_lm_head(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`reload_into` on an engine whose oneDNN copy of the tied head is a packed one (hidden 128:
    at the stage test's hidden 64, oneDNN happens to read the shared weight in place, so a stale head
    would not show there). Without `refresh_embeddings` this engine answers with the old head, which is
    checked first, so the tolerance of `assert_engine_matches` is shown to catch a stale layer."""
    pytest.importorskip("vllm")
    import torch
    from support.tiny import make_model
    from transformers import AutoModelForCausalLM

    from lmforge.trainer.align import vllm_cpu

    vllm_cpu.prepare_process()
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from vllm import LLM

    model_dir = make_model(tmp_path / "m", hidden=128, layers=2, heads=4)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    assert model.config.tie_word_embeddings
    llm = LLM(model=str(model_dir), dtype="float32", max_model_len=256, distributed_executor_backend="uni", seed=0)
    prompts = [[5, 17, 33, 9], [40, 2, 71]]
    assert_engine_matches(llm, model, prompts)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.2)
    # first the reload alone: the engine's answers are those of a stale head, far below the tolerance
    monkeypatch.setattr(vllm_cpu, "refresh_embeddings", lambda model: 0)
    vllm_cpu.reload_into(llm, ((n, p.data) for n, p in model.named_parameters()))
    stale, _ = shortfalls(model, prompts, greedy_vllm(llm, prompts, 12))
    assert max(stale) > 100 * TIE_TOLERANCE, stale
    monkeypatch.undo()
    vllm_cpu.reload_into(llm, ((n, p.data) for n, p in model.named_parameters()))
    assert_engine_matches(llm, model, prompts)
