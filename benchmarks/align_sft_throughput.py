"""SFT samples/s: LMForge's align stage against a bare trl `SFTTrainer` on the same model and data.

Both train the same tiny Llama (hidden 256, 4 layers, ~3.7M parameters) for the same number of steps
on the same chats, one process, bf16 autocast on the CPU. The baseline is what a user would write
by hand: `SFTTrainer` on prompt/completion rows (completion-only loss). Ours is the whole stage:
reading and validating rows, tokenizing with assistant masks, checkpoints to the store, publishing.
Goal: ours ≥ 0.95× the baseline's samples/s (timed over the training loop; setup reported apart).
Both use the same settings (notably activation checkpointing off: trl turns it on by default).

    ~/.cache/lmforge/venv/bin/python benchmarks/align_sft_throughput.py [--steps 200]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]

from support.tiny import make_model, sentences  # noqa: E402

BATCH, MAX_LEN, EVERY = 8, 128, 100
"""Rows per step, token limit, checkpoint interval (both sides save; ours also uploads to the store)."""


def rows(n: int) -> list[dict[str, object]]:
    qs = sentences(2 * n, seed=3)
    return [
        {"messages": [{"role": "user", "content": qs[2 * i]}, {"role": "assistant", "content": qs[2 * i + 1]}]}
        for i in range(n)
    ]


def baseline(model_dir: Path, data: list[dict[str, object]], steps: int, out: Path) -> float:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tok = AutoTokenizer.from_pretrained(model_dir)
    ds = Dataset.from_list(
        [
            {"prompt": [r["messages"][0]], "completion": [r["messages"][1]]}  # type: ignore[index]
            for r in data
        ]
    )
    config = SFTConfig(
        output_dir=str(out),
        max_steps=steps,
        per_device_train_batch_size=BATCH,
        learning_rate=1e-3,
        bf16=True,
        use_cpu=True,
        report_to="none",
        save_strategy="steps",
        save_steps=EVERY,
        logging_steps=1,
        activation_checkpointing=False,
        warmup_steps=0.03,
        lr_scheduler_type="cosine",
        disable_tqdm=True,
        max_length=MAX_LEN,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
    )
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(model_dir), args=config, train_dataset=ds, processing_class=tok
    )
    return float(trainer.train().metrics["train_samples_per_second"])


def ours(model_dir: Path, data: list[dict[str, object]], steps: int, tmp: Path) -> tuple[float, float]:
    import json

    from lmforge.api.contract import StageName, StageSpec
    from lmforge.trainer.align.stage import run
    from lmforge.trainer.context import StageContext
    from lmforge.trainer.progress import ProgressReporter

    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data))
    os.environ["LMFORGE_WORK_DIR"] = str(tmp / "work")
    job = {
        "modelRef": {"uri": str(model_dir)},
        "method": "sft",
        "data": {"uri": str(tmp / "sft.jsonl"), "validationFraction": 0},
        "training": {"maxSteps": steps, "microBatchSize": BATCH, "lr": 1e-3, "maxLength": MAX_LEN},
        "checkpoint": {"everySteps": EVERY},
    }
    spec = StageSpec(
        stage=StageName.ALIGN,
        store=str(tmp / "store"),
        output="runs/sft",
        run_id="bench",
        resource={
            "apiVersion": "lmforge.io/v1alpha1",
            "kind": "AlignmentJob",
            "metadata": {"name": "bench"},
            "spec": job,
        },
    )
    ctx = StageContext.from_spec(spec, ProgressReporter(StageName.ALIGN, "bench", None, stream=open(os.devnull, "w")))
    start = time.perf_counter()
    from transformers import Trainer

    measured: dict[str, float] = {}
    original = Trainer.train

    def timed(self: Trainer, *a: Any, **k: Any) -> Any:
        out = original(self, *a, **k)
        measured["sps"] = out.metrics["train_samples_per_second"]
        return out

    Trainer.train = timed  # type: ignore[method-assign]
    run(ctx)
    Trainer.train = original  # type: ignore[method-assign]
    return measured["sps"], time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model_dir = make_model(tmp / "base", hidden=256, layers=4, heads=8)
        data = rows(BATCH * args.steps)
        baseline(model_dir, data[: BATCH * 4], 4, tmp / "warm")  # warm caches/kernels once for both
        # Interleaved rounds, best of each: the machine is shared and load drifts within a minute.
        base_runs, our_runs, totals = [], [], []
        for i in range(args.rounds):
            base_runs.append(baseline(model_dir, data, args.steps, tmp / f"bare-{i}"))
            sps, total = ours(model_dir, data, args.steps, tmp / f"ours-{i}")
            our_runs.append(sps)
            totals.append(total)
        print(
            f"bare trl SFTTrainer: {max(base_runs):.1f} samples/s (rounds: {', '.join(f'{x:.1f}' for x in base_runs)})"
        )
        print(
            f"lmforge align sft:   {max(our_runs):.1f} samples/s (rounds: {', '.join(f'{x:.1f}' for x in our_runs)}; "
            f"whole stage incl. setup and publish: {min(totals):.1f} s)"
        )
        print(f"ratio ours/baseline: {max(our_runs) / max(base_runs):.2f}x (goal >= 0.95x)")


if __name__ == "__main__":
    main()
