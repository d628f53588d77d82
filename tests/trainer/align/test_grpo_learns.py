"""GRPO learns a checkable task: small sums, rewarded only by the exact match of the last number.

The tiny random model first gets a short SFT warm start (the align stage, `method: sft`) on the task's
format in which the right sum is the *minority* answer: 30% of the warm-start rows answer `a + b`,
70% the plausible wrong answer `a` (the first operand copied). Sampling then finds the right sum often
enough for the reward to rank a group, while greedy decoding still prefers the copy, so held-out
prompts start near 0. GRPO with the exact-match reward alone must move the probability mass from the
copy onto the sum: the rollouts' mean reward rises, and the exported model answers held-out prompts
(filler words the training never saw) right where the warm start did not.

Everything is seeded (data, split, `training.seed`); the margins asserted are a fraction of what a run
shows (CPU, 2 threads: held-out greedy reward ~0.02 -> ~0.58, p(sum) ~0.11 -> ~0.46, p(copy)
~0.69 -> ~0.06, rollouts' mean reward ~0.24 over the first 10 steps -> ~0.38 over the last 10).
About 90 s on 2 idle cores.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from .conftest import RunStage, records, write_jsonl

pytestmark = [pytest.mark.ml, pytest.mark.slow]

WORDS = ["cat", "dog", "bird", "fish", "tree", "river", "stone", "cloud", "red", "small", "quiet", "old"]
RIGHT_SHARE = 0.3
"""Share of warm-start rows that answer the sum (the rest copy the first operand)."""
STEPS = 40


def problems(n: int, seed: int) -> list[tuple[str, int, int]]:
    """(prompt, a, b): "<filler> : a + b =" with a in 0..4 and b in 1..4, so the sum is one digit
    and never equals the copied operand."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.randrange(5), rng.randrange(1, 5)
        filler = " ".join(rng.choice(WORDS) for _ in range(2))
        out.append((f"{filler} : {a} + {b} =", a, b))
    return out


def warm_start_rows(n: int, seed: int) -> list[dict[str, str]]:
    """SFT rows whose answer is the sum in `RIGHT_SHARE` of them, else the first operand."""
    rng = random.Random(seed + 1)
    return [{"prompt": p, "response": str(a + b if rng.random() < RIGHT_SHARE else a)} for p, a, b in problems(n, seed)]


def grpo_rows(n: int, seed: int) -> list[dict[str, str]]:
    return [{"prompt": p, "answer": str(a + b)} for p, a, b in problems(n, seed)]


def step_rewards(ctx: Any) -> list[float]:
    """The mean reward of each step's rollouts (the last record of a step wins)."""
    by_step = {r.step: r.metrics["mean_reward"] for r in records(ctx) if "mean_reward" in r.metrics}
    return [by_step[s] for s in sorted(by_step)]


def answer_probabilities(model_dir: Path, held: list[tuple[str, int, int]]) -> tuple[float, float]:
    """Mean next-token probability, after the prompt, of the right sum and of the copied operand."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    right = copy = 0.0
    for prompt, a, b in held:
        text = tok.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        ids = tok(text, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            probs = model(**ids).logits[0, -1].softmax(-1)
        right += probs[tok.convert_tokens_to_ids(str(a + b))].item()
        copy += probs[tok.convert_tokens_to_ids(str(a))].item()
    return right / len(held), copy / len(held)


def test_grpo_learns_sums_from_an_exact_match_reward(run_stage: RunStage, tiny_model: Path, tmp_path: Path) -> None:
    warm_data = write_jsonl(tmp_path / "warm.jsonl", warm_start_rows(400, seed=1))
    _, warm_out = run_stage(
        {
            "modelRef": {"uri": str(tiny_model)},
            "method": "sft",
            "data": {"uri": str(warm_data), "validationFraction": 0},
            "training": {
                "maxSteps": 200,
                "microBatchSize": 32,
                "lr": 3e-3,
                "warmupRatio": 0,
                "maxLength": 48,
                "precision": "fp32",
            },
        },
        name="warm",
    )
    warm = Path(warm_out.artifacts["model"].removeprefix("file://"))

    data = write_jsonl(tmp_path / "sums.jsonl", grpo_rows(240, seed=2))
    ctx, grpo_out = run_stage(
        {
            "modelRef": {"uri": str(warm)},
            "method": "grpo",
            "data": {"uri": str(data), "validationFraction": 0.2},
            "grpo": {
                "numGenerations": 8,
                "maxCompletionLength": 3,
                "temperature": 1.0,
                "rewards": [{"type": "answer", "extract": "lastNumber"}],
            },
            "training": {"maxSteps": STEPS, "microBatchSize": 64, "lr": 3e-3, "warmupRatio": 0, "precision": "fp32"},
        },
        name="grpo",
    )
    trained = Path(grpo_out.artifacts["model"].removeprefix("file://"))
    rewards = step_rewards(ctx)
    metrics = grpo_out.metrics
    held = problems(60, seed=7)  # prompts neither stage trained on
    before, after = answer_probabilities(warm, held), answer_probabilities(trained, held)
    print("rewards", [round(x, 2) for x in rewards], metrics, "p(sum), p(copy)", before, after)

    assert len(rewards) == STEPS
    early, late = sum(rewards[:10]) / 10, sum(rewards[-10:]) / 10
    assert late > early + 0.06, rewards
    # the premise: the warm start samples the sum sometimes but answers the copy greedily
    assert 0.03 < before[0] < 0.3 and before[1] > 0.4, before
    assert metrics["first_eval_mean_reward"] < 0.2, metrics
    # the exported model: the held-out split (greedy, scored by the stage) and unseen prompts
    assert metrics["eval_mean_reward"] > metrics["first_eval_mean_reward"] + 0.3, metrics
    assert after[0] > before[0] + 0.2 and after[1] < before[1] - 0.3, (before, after)
