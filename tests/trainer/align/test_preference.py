"""Reward model, DPO and PPO on synthetic data with learnable rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmforge.api.contract import InputArtifacts

from .conftest import RunStage, preference_rows, records, write_jsonl

pytestmark = pytest.mark.ml


def margin(model_dir: Path, rows: list[dict[str, str]]) -> float:
    """Mean log π(chosen) − log π(rejected) over the answers' tokens."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lmforge.trainer.chat import encode_chat

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()

    def logp(prompt: str, answer: str) -> float:
        ids, mask = encode_chat(
            tok, [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}], tok.chat_template
        )
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, :-1].log_softmax(-1)
        picked = logits.gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
        return float((picked * torch.tensor(mask[1:])).sum())

    return sum(logp(r["prompt"], r["chosen"]) - logp(r["prompt"], r["rejected"]) for r in rows) / len(rows)


def test_reward_model_beats_chance_then_drives_ppo(run_stage: RunStage, tiny_model: Path, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "pref.jsonl", preference_rows(160))
    _, outcome = run_stage(
        {
            "modelRef": {"uri": str(tiny_model)},
            "method": "reward",
            "data": {"uri": str(data), "validationFraction": 0.2},
            "training": {"maxSteps": 40, "microBatchSize": 16, "lr": 3e-3, "maxLength": 48, "precision": "fp32"},
            "checkpoint": {"everySteps": 100},
        },
        name="rm",
    )
    metrics = outcome.metrics
    assert metrics["pairwise_accuracy"] >= 0.75, metrics  # held-out pairs (32 of them); chance is 0.5
    from transformers import AutoModelForSequenceClassification

    rm = AutoModelForSequenceClassification.from_pretrained(outcome.artifacts["model"].removeprefix("file://"))
    assert rm.config.num_labels == 1

    # The published reward model scores PPO rollouts when named by rewardModelRef.
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"name the {n}"} for n in ("cat", "dog", "fish")])
    inputs = {"AlignmentJob/rm": InputArtifacts(kind="AlignmentJob", name="rm", artifacts=outcome.artifacts)}
    _, out = run_stage(
        {
            "modelRef": {"uri": str(tiny_model)},
            "method": "ppo",
            "data": {"uri": str(prompts)},
            "ppo": {"rewardModelRef": {"name": "rm"}, "rolloutBatchSize": 4, "responseLength": 6},
            "training": {"maxSteps": 2, "microBatchSize": 4},
        },
        name="ppo-rm",
        inputs=inputs,
    )
    assert set(out.artifacts) == {"model"} and "mean_reward" in out.metrics


@pytest.mark.parametrize("method", ["dpo", "ipo"])
def test_dpo_raises_the_chosen_rejected_margin(
    run_stage: RunStage, tiny_model: Path, tmp_path: Path, method: str
) -> None:
    data = write_jsonl(tmp_path / "pref.jsonl", preference_rows(64))
    beta = 0.1 if method == "dpo" else 0.5
    _, outcome = run_stage(
        {
            "modelRef": {"uri": str(tiny_model)},
            "method": method,
            "data": {"uri": str(data)},
            "preference": {"beta": beta},
            "adapter": {"type": "lora", "r": 8, "alpha": 16},
            "training": {"maxSteps": 12, "microBatchSize": 8, "lr": 5e-3, "maxLength": 48, "precision": "fp32"},
        }
    )
    held = preference_rows(16, seed=5)
    before, after = margin(tiny_model, held), margin(Path(outcome.artifacts["model"].removeprefix("file://")), held)
    assert after > before + 0.5, (before, after)
    assert outcome.metrics["reward_margin"] > outcome.metrics["first_reward_margin"]


def test_ppo_raises_mean_reward(
    run_stage: RunStage, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    data = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"say something {i}"} for i in range(32)])
    job = {
        "modelRef": {"uri": str(tiny_model)},
        "method": "ppo",
        "data": {"uri": str(data)},
        "ppo": {"rewardFunction": "rewards:letter_a", "rolloutBatchSize": 16, "responseLength": 12, "klCoef": 0.01},
        "training": {"maxSteps": 24, "microBatchSize": 8, "lr": 3e-3, "precision": "fp32"},
    }
    ctx, outcome = run_stage(job)
    rewards = [r.metrics["mean_reward"] for r in records(ctx) if "mean_reward" in r.metrics]
    kls = [r.metrics["kl"] for r in records(ctx) if "kl" in r.metrics]
    assert len(rewards) == 24
    early, late = sum(rewards[:4]) / 4, sum(rewards[-4:]) / 4
    assert late > 2 * early, rewards
    assert kls[0] == pytest.approx(0.0, abs=1e-3) and kls[-1] > 0  # the policy moved away from the reference
    assert outcome.metrics["first_mean_reward"] == rewards[0] and outcome.metrics["mean_reward"] == rewards[-1]
    assert "resumed_from_step" not in outcome.metrics
    # Run again on the same output: it resumes from the last checkpoint, with no step left to train.
    _, again = run_stage(job)
    assert again.metrics["resumed_from_step"] == 24.0 and "first_mean_reward" not in again.metrics


def test_kto_learns_from_unpaired_thumbs(run_stage: RunStage, tiny_model: Path, tmp_path: Path) -> None:
    """Each preference pair becomes two unpaired rows (chosen: label true, rejected: false), as
    thumbs-up/down feedback arrives; the margin on held-out pairs must open."""
    import torch
    from transformers import AutoModelForCausalLM

    rows = []
    for r in preference_rows(64):
        rows += [
            {"prompt": r["prompt"], "completion": r["chosen"], "label": True},
            {"prompt": r["prompt"], "completion": r["rejected"], "label": False},
        ]
    data = write_jsonl(tmp_path / "thumbs.jsonl", rows)
    _, outcome = run_stage(
        {
            "modelRef": {"uri": str(tiny_model)},
            "method": "kto",
            "data": {"uri": str(data), "validationFraction": 0},
            "kto": {"beta": 0.1},
            "adapter": {"type": "lora", "r": 8, "alpha": 16},
            "training": {"maxSteps": 12, "microBatchSize": 8, "lr": 5e-3, "maxLength": 48, "precision": "fp32"},
        }
    )
    out = Path(outcome.artifacts["model"].removeprefix("file://"))
    held = preference_rows(16, seed=5)
    before, after = margin(tiny_model, held), margin(out, held)
    assert after > before + 0.5, (before, after)
    metrics = outcome.metrics
    assert metrics["loss"] < metrics["first_loss"], metrics
    start = AutoModelForCausalLM.from_pretrained(tiny_model).state_dict()
    trained = AutoModelForCausalLM.from_pretrained(out).state_dict()
    assert any(not torch.equal(start[k], trained[k]) for k in start)
