"""Gradient checkpointing and gradient accumulation change memory, not the maths: each trains SFT to the
same per-step loss trajectory as the plain run (fp32, same rows per optimizer step)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from .conftest import RunStage, records, sft_rows, write_jsonl

pytestmark = pytest.mark.ml

STEPS = 6


def losses(run_stage: RunStage, tiny_model: Path, data: Path, name: str, **training: Any) -> list[float]:
    ctx, _ = run_stage(
        {
            "modelRef": {"uri": str(tiny_model)},
            "method": "sft",
            "data": {"uri": str(data), "validationFraction": 0},
            "training": {
                "maxSteps": STEPS,
                "microBatchSize": 8,
                "lr": 3e-3,
                "maxLength": 64,
                "precision": "fp32",
                **training,
            },
        },
        name=name,
    )
    by_step = {r.step: r.metrics["loss"] for r in records(ctx) if "loss" in r.metrics and r.step > 0}
    return [by_step[s] for s in sorted(by_step)]


def test_checkpointing_and_accumulation_keep_the_loss_trajectory(
    run_stage: RunStage, tiny_model: Path, tmp_path: Path
) -> None:
    data = write_jsonl(tmp_path / "sft.jsonl", sft_rows(64))
    plain = losses(run_stage, tiny_model, data, "plain")
    checkpointed = losses(run_stage, tiny_model, data, "ckpt", gradientCheckpointing=True)
    accumulated = losses(run_stage, tiny_model, data, "accum", microBatchSize=4, gradientAccumulationSteps=2)
    assert len(plain) == STEPS and plain[-1] < plain[0]  # it trains
    assert checkpointed == pytest.approx(plain, rel=1e-4, abs=1e-5)
    assert accumulated == pytest.approx(plain, rel=2e-3, abs=1e-3)
