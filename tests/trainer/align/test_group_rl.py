"""GRPO and RLOO on a toy arithmetic task with checkable answers (`<filler> : a + 1 =`).

The rewards are the checkable answer (a bare number equal to the sum) plus a dense term, the share of
digits in the answer, starting from the tiny random model. What rises within a CPU-sized run is the
dense term (a random model's rollouts hold few digits); the held-out prompts (random filler words, so
strings the training never saw) are answered greedily before and after.

Learning the sums themselves from the answer reward alone needs a warm start that already samples
the right sum now and then: `test_grpo_learns.py` (a random model's rollouts are never right, so the
answer term alone gives it no signal; see docs/alignment.md).
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
    """ "<filler> : a + 1 =" with a in 0..4 and the answer a + 1."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.randrange(5), 1
        filler = " ".join(rng.choice(WORDS) for _ in range(2))
        out.append({"prompt": f"{filler} : {a} + {b} =", "answer": str(a + b)})
    return out


def step_rewards(ctx: Any) -> list[float]:
    """The mean reward of each step's rollouts (the last record of a step wins)."""
    by_step = {r.step: r.metrics["mean_reward"] for r in records(ctx) if "mean_reward" in r.metrics}
    return [by_step[s] for s in sorted(by_step)]


REWARDS = [
    {"type": "answer", "extract": "regex", "pattern": r"^\s*(\d+)\s*$"},  # a bare number, and right
    {"type": "function", "function": "rewards:digit_share"},
]
"""The checkable answer plus a dense term (the share of digits in the answer) that a random model
can climb: the answer term alone gives a tiny random model no signal to follow."""


@pytest.fixture
def reward_module(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).parent))


def grpo_sums_learn(run_stage: RunStage, tiny_model: Path, tmp_path: Path, rollouts: str, name: str) -> Any:
    """30 GRPO steps on the sums with `rollouts`; asserts the reward rises; returns the outcome."""
    data = write_jsonl(tmp_path / "sums.jsonl", sums(200, seed=3))
    ctx, outcome = run_stage(
        {
            "modelRef": {"uri": str(tiny_model)},
            "method": "grpo",
            "data": {"uri": str(data), "validationFraction": 0.2},
            "grpo": {"numGenerations": 8, "maxCompletionLength": 6, "rewards": REWARDS, "rollouts": rollouts},
            "training": {"maxSteps": 30, "microBatchSize": 32, "lr": 3e-3, "warmupRatio": 0, "precision": "fp32"},
        },
        name=name,
    )
    rewards = step_rewards(ctx)
    metrics = outcome.metrics
    print("rewards", [round(x, 2) for x in rewards], metrics)
    assert len(rewards) == 30
    early, late = sum(rewards[:6]) / 6, sum(rewards[-6:]) / 6
    assert late > max(3 * early, early + 0.08), rewards
    # the held-out prompts (never trained on), answered greedily by the model that is exported
    assert metrics["eval_mean_reward"] > metrics["first_eval_mean_reward"] + 0.3, metrics
    return outcome


@pytest.mark.usefixtures("reward_module")
def test_grpo_raises_a_verifiable_reward(run_stage: RunStage, tiny_model: Path, tmp_path: Path) -> None:
    grpo_sums_learn(run_stage, tiny_model, tmp_path, "auto", "grpo")


@pytest.mark.usefixtures("reward_module")
def test_rloo_moves_reward_and_parameters(run_stage: RunStage, tiny_model: Path, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    data = write_jsonl(tmp_path / "sums.jsonl", sums(64, seed=3))
    ctx, outcome = run_stage(
        {
            "modelRef": {"uri": str(tiny_model)},
            "method": "rloo",
            "data": {"uri": str(data), "validationFraction": 0},
            "rloo": {"numGenerations": 4, "maxCompletionLength": 6, "rewards": REWARDS, "beta": 0.05},
            "training": {"maxSteps": 12, "microBatchSize": 16, "lr": 3e-3, "warmupRatio": 0, "precision": "fp32"},
        },
        name="rloo",
    )
    rewards = step_rewards(ctx)
    assert len(rewards) == 12 and sum(rewards[-4:]) / 4 > sum(rewards[:4]) / 4, rewards
    before = AutoModelForCausalLM.from_pretrained(tiny_model).state_dict()
    after = AutoModelForCausalLM.from_pretrained(outcome.artifacts["model"].removeprefix("file://")).state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


@pytest.mark.usefixtures("reward_module")  # the rewards import `rewards:digit_share`
def test_batch_that_splits_a_group_is_refused(run_stage: RunStage, tiny_model: Path, tmp_path: Path) -> None:
    from lmforge.trainer.errors import InvalidInput

    data = write_jsonl(tmp_path / "sums.jsonl", sums(8, seed=3))
    with pytest.raises(
        InvalidInput, match=r"spec.grpo.numGenerations: .* 6\) must be a multiple of numGenerations \(4\)"
    ):
        run_stage(
            {
                "modelRef": {"uri": str(tiny_model)},
                "method": "grpo",
                "data": {"uri": str(data)},
                "grpo": {"numGenerations": 4, "rewards": REWARDS},
                "training": {"maxSteps": 1, "microBatchSize": 6, "precision": "fp32"},
            }
        )


@pytest.mark.parametrize(
    ("installed", "world", "why"),
    [
        pytest.param(False, "1", r"vLLM is not installed", id="not-installed"),
        pytest.param(True, "2", r"vllm rollouts on the CPU run in one process, not 2", id="cpu-multi-process"),
    ],
)
def test_vllm_rollouts_are_refused_where_they_cannot_run(
    monkeypatch: pytest.MonkeyPatch, installed: bool, world: str, why: str
) -> None:
    import importlib

    from lmforge.api.alignment import AlignmentJobSpec, RolloutEngine
    from lmforge.trainer.align.group_rl import use_vllm
    from lmforge.trainer.errors import InvalidInput

    # trl's lazy top-level module does not resolve `trl.import_utils` as an attribute
    monkeypatch.setattr(importlib.import_module("trl.import_utils"), "is_vllm_available", lambda *a, **k: installed)
    monkeypatch.setenv("WORLD_SIZE", world)
    spec = AlignmentJobSpec.model_validate(
        {
            "modelRef": {"uri": "file:///m"},
            "method": "grpo",
            "data": {"uri": "d.jsonl"},
            "grpo": {"numGenerations": 4, "rewards": REWARDS, "rollouts": "vllm"},
        }
    )
    with pytest.raises(InvalidInput, match=rf"spec.grpo.rollouts: .*{why}"):
        use_vllm(spec, RolloutEngine.VLLM)


def test_auto_rollouts_fall_back_to_generate_on_the_cpu_and_say_why(capsys: pytest.CaptureFixture[str]) -> None:
    from lmforge.api.alignment import AlignmentJobSpec, RolloutEngine
    from lmforge.trainer.align.group_rl import use_vllm

    spec = AlignmentJobSpec.model_validate(
        {
            "modelRef": {"uri": "file:///m"},
            "method": "grpo",
            "data": {"uri": "d.jsonl"},
            "grpo": {"numGenerations": 4, "rewards": REWARDS},
        }
    )
    assert spec.grpo is not None and spec.grpo.rollouts is RolloutEngine.AUTO
    assert use_vllm(spec, RolloutEngine.AUTO) is False
    assert use_vllm(spec, RolloutEngine.GENERATE) is False
    out = capsys.readouterr().out
    assert out.count("warning: spec.grpo.rollouts auto: rollouts use transformers' generate, not vLLM") == 1, out
    assert "no GPU" in out and "NCCL" in out, out  # both of trl's vLLM modes, and why neither runs here
