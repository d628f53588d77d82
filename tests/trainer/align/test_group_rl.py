"""GRPO and RLOO on a toy arithmetic task with checkable answers (`<filler> : a + 1 =`).

The tiny random model first gets a short SFT whose answers are random digits: it learns some of the
answer format (a bare digit, then the end of the turn), none of the sums. GRPO with a format reward
then has to raise the share of well-formed answers from the reward alone; the held-out prompts (random
filler words, so strings the training never saw) are answered greedily before and after.

Not here: learning the sums themselves from the answer reward. On this 2-layer, 64-wide model it did
not move within a CPU-sized budget (40 steps x 64 rollouts, lr 1e-3 to 1e-2: flat at chance, or a
collapse at the high rates); see docs/alignment.md.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from .conftest import RunStage, records, write_jsonl

pytestmark = pytest.mark.ml

WORDS = ["cat", "dog", "bird", "fish", "tree", "river", "stone", "cloud", "red", "small", "quiet", "old"]


def sums(n: int, seed: int) -> list[dict[str, Any]]:
    """"<filler> : a + 1 =" with a in 0..4 and the answer a + 1."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.randrange(5), 1
        filler = " ".join(rng.choice(WORDS) for _ in range(2))
        out.append({"prompt": f"{filler} : {a} + {b} =", "answer": str(a + b)})
    return out


def random_answers(rows: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """SFT rows whose answers are random digits in 1..5: the format, not the sums."""
    rng = random.Random(seed)
    return [{"prompt": r["prompt"], "response": str(rng.randrange(1, 6))} for r in rows]


def step_rewards(ctx: Any) -> list[float]:
    """The mean reward of each step's rollouts (the last record of a step wins)."""
    by_step = {r.step: r.metrics["mean_reward"] for r in records(ctx) if "mean_reward" in r.metrics}
    return [by_step[s] for s in sorted(by_step)]


def sft_start(run_stage: RunStage, tiny_model: Path, tmp_path: Path, steps: int) -> Path:
    data = write_jsonl(tmp_path / "format.jsonl", random_answers(sums(256, seed=1), seed=2))
    _, artifacts = run_stage(
        {"modelRef": {"uri": str(tiny_model)}, "method": "sft", "data": {"uri": str(data), "validationFraction": 0},
         "training": {"maxSteps": steps, "microBatchSize": 16, "lr": 3e-3, "maxLength": 48, "precision": "fp32"}},
        name=f"sft-{steps}")
    return Path(artifacts["model"].removeprefix("file://"))


@pytest.fixture
def warm_start(run_stage: RunStage, tiny_model: Path, tmp_path: Path) -> Path:
    """The answer format learnt (a bare digit, then the end of the turn)."""
    return sft_start(run_stage, tiny_model, tmp_path, 100)


@pytest.fixture
def half_start(run_stage: RunStage, tiny_model: Path, tmp_path: Path) -> Path:
    """The answer format half learnt: some rollouts are a bare digit, others not ('5#3', '21 bright')."""
    return sft_start(run_stage, tiny_model, tmp_path, 25)


REWARDS = [{"type": "answer", "extract": "regex", "pattern": r"^\s*(\d+)\s*$"},  # a bare number, and right
           {"type": "format", "pattern": r"^\s*\d+\s*$", "weight": 0.2}]


FORMAT = [{"type": "format", "pattern": r"^\s*\d+\s*$"}]
"""Answer with a bare number: the warm-started model does a fraction of the time ('5#3', '21 bright')."""


def test_grpo_raises_a_verifiable_reward(run_stage: RunStage, half_start: Path, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "sums.jsonl", sums(200, seed=3))
    ctx, _ = run_stage(
        {"modelRef": {"uri": str(half_start)}, "method": "grpo", "data": {"uri": str(data), "validationFraction": 0.2},
         "grpo": {"numGenerations": 8, "maxCompletionLength": 4, "rewards": FORMAT, "rollouts": "auto"},
         "training": {"maxSteps": 40, "microBatchSize": 32, "lr": 3e-3, "warmupRatio": 0, "precision": "fp32"}},
        name="grpo")
    rewards = step_rewards(ctx)
    print("rewards", [round(x, 2) for x in rewards], ctx.extra["metrics"])
    assert len(rewards) == 40
    early, late = sum(rewards[:8]) / 8, sum(rewards[-8:]) / 8
    assert late > max(2 * early, early + 0.15), rewards
    metrics = ctx.extra["metrics"]
    # the held-out prompts (never trained on), answered greedily by the model that is exported
    assert metrics["eval_mean_reward"] > metrics["first_eval_mean_reward"] + 0.3, metrics


def test_rloo_moves_reward_and_parameters(run_stage: RunStage, warm_start: Path, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    data = write_jsonl(tmp_path / "sums.jsonl", sums(64, seed=3))
    ctx, artifacts = run_stage(
        {"modelRef": {"uri": str(warm_start)}, "method": "rloo", "data": {"uri": str(data), "validationFraction": 0},
         "rloo": {"numGenerations": 4, "maxCompletionLength": 4, "rewards": [*REWARDS, *FORMAT], "beta": 0.05},
         "training": {"maxSteps": 12, "microBatchSize": 16, "lr": 3e-3, "warmupRatio": 0, "precision": "fp32"}},
        name="rloo")
    rewards = step_rewards(ctx)
    assert len(rewards) == 12 and sum(rewards[-4:]) / 4 > sum(rewards[:4]) / 4, rewards
    before = AutoModelForCausalLM.from_pretrained(warm_start).state_dict()
    after = AutoModelForCausalLM.from_pretrained(artifacts["model"].removeprefix("file://")).state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_batch_that_splits_a_group_is_refused(run_stage: RunStage, tiny_model: Path, tmp_path: Path) -> None:
    from lmforge.trainer.errors import InvalidInput

    data = write_jsonl(tmp_path / "sums.jsonl", sums(8, seed=3))
    with pytest.raises(InvalidInput, match=r"spec.grpo.numGenerations: .* 6\) must be a multiple of numGenerations \(4\)"):
        run_stage({"modelRef": {"uri": str(tiny_model)}, "method": "grpo", "data": {"uri": str(data)},
                   "grpo": {"numGenerations": 4, "rewards": REWARDS},
                   "training": {"maxSteps": 1, "microBatchSize": 6, "precision": "fp32"}})


def test_vllm_rollouts_without_a_gpu_are_refused(run_stage: RunStage, tiny_model: Path, tmp_path: Path) -> None:
    from lmforge.trainer.errors import InvalidInput

    data = write_jsonl(tmp_path / "sums.jsonl", sums(8, seed=3))
    with pytest.raises(InvalidInput, match=r"spec.grpo.rollouts: vllm rollouts cannot run here"):
        run_stage({"modelRef": {"uri": str(tiny_model)}, "method": "grpo", "data": {"uri": str(data)},
                   "grpo": {"numGenerations": 4, "rewards": REWARDS, "rollouts": "vllm"},
                   "training": {"maxSteps": 1, "microBatchSize": 4, "precision": "fp32"}})
