"""`lmforge run examples/grpo`: corpus → base → format SFT → GRPO with verifiable rewards, as shipped
(~1.5 min here), ending with the GRPO job's held-out reward in its result."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.ml]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "grpo"


def test_grpo_example_runs_under_lmforge_run(tmp_path: Path) -> None:
    store = tmp_path / "store"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LMFORGE_WORK_DIR": str(tmp_path / "work")}
    done = subprocess.run(
        [sys.executable, "-m", "lmforge.cli", "run", str(EXAMPLE), "--store", str(store), "--no-serve", "-q"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    logs = "".join(p.read_text() for p in (store / ".lmforge-state" / "logs").glob("grpo-sums-*.log"))
    assert "rollouts use transformers' generate, not vLLM" in logs  # the CPU falls back, and says so
    (card,) = store.glob("alignmentjobs/*/grpo-sums/*/model/README.md")
    for metric in ("mean_reward", "first_eval_mean_reward", "eval_mean_reward"):
        assert f"- {metric}: " in card.read_text(), card.read_text()
