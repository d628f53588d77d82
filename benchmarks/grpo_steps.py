"""GRPO steps/s: LMForge's align stage (`method: grpo`) against a bare trl `GRPOTrainer` script with
the same settings, on the same model, prompts and reward.

Both train the same tiny Llama (hidden 128, 2 layers, fp32) from the same seed on the same sum prompts
with the same reward (exact match of the last number), group size, completion length, sampling,
learning rate and schedule, checkpoint interval and stop tokens (EOS and `<|end|>`), rollouts through
transformers' `generate` (trl's own vLLM sync fails on vLLM's CPU build, so the bare script cannot
use vLLM here; the stage's `rollouts: vllm` against `generate` is `grpo_stage_rollouts.py`). The baseline is what a
user would write by hand; ours is the whole stage (rows read and validated, the reward built from the
spec, progress records, checkpoints mirrored to the store, the held-out reward before and after,
publishing). steps/s is trl's `train_steps_per_second` (the training loop: rollouts + updates); the
whole stage's wall time is reported apart. Rounds alternate baseline / ours; the goal (ours >= 0.95x)
is met when the slowest round's ratio meets it.

    flock /tmp/lmforge-bench.lock nice -n 5 python benchmarks/grpo_steps.py [--steps 12 --rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

THREADS = int(os.environ.get("LMFORGE_BENCH_THREADS", "2"))
for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(THREADS)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]

from support.tiny import make_model  # noqa: E402

BATCH, GROUP, COMPLETION, LR, EVERY, SEED = 32, 8, 16, 1e-3, 5, 1234
WORDS = ["cat", "dog", "bird", "fish", "tree", "river", "stone", "cloud"]


def rows(n: int) -> list[dict[str, str]]:
    return [
        {"prompt": f"{WORDS[i % 8]} {WORDS[(3 * i) % 8]} : {i % 5} + {1 + i % 4} =", "answer": str(i % 5 + 1 + i % 4)}
        for i in range(n)
    ]


def last_number_matches(prompts: list[Any], completions: list[Any], answer: list[str], **_: Any) -> list[float | None]:
    """The hand-written reward: 1 when the completion's last number is the answer."""
    out: list[float | None] = []
    for c, want in zip(completions, answer, strict=True):
        found = re.findall(r"-?\d+", c[0]["content"] if isinstance(c, list) else c)
        out.append(float(bool(found) and int(found[-1]) == int(want)))
    return out


def baseline(model_dir: Path, data: list[dict[str, str]], steps: int, out: Path) -> float:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    model.generation_config.eos_token_id = [tok.eos_token_id, tok.convert_tokens_to_ids("<|end|>")]
    ds = Dataset.from_list(
        [{"prompt": [{"role": "user", "content": r["prompt"]}], "answer": r["answer"]} for r in data]
    )
    config = GRPOConfig(
        output_dir=str(out),
        max_steps=steps,
        per_device_train_batch_size=BATCH,
        num_generations=GROUP,
        max_completion_length=COMPLETION,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        beta=0.0,
        learning_rate=LR,
        lr_scheduler_type="cosine",
        warmup_steps=0,
        seed=SEED,
        use_cpu=True,
        report_to="none",
        logging_steps=1,
        save_strategy="steps",
        save_steps=EVERY,
        save_total_limit=1,
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
        remove_unused_columns=False,
    )
    trainer = GRPOTrainer(
        model=model, reward_funcs=last_number_matches, args=config, train_dataset=ds, processing_class=tok
    )
    return float(trainer.train().metrics["train_steps_per_second"])


def ours(
    model_dir: Path,
    data: list[dict[str, str]],
    steps: int,
    tmp: Path,
    rollouts: str = "generate",
    batch: int = BATCH,
    completion: int = COMPLETION,
) -> tuple[float, float]:
    """(trl's train_steps_per_second, the whole stage's seconds) of the align stage in this process."""
    from transformers import Trainer

    from lmforge.api.contract import StageName, StageSpec
    from lmforge.trainer.align.stage import run
    from lmforge.trainer.context import StageContext
    from lmforge.trainer.progress import ProgressReporter

    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "sums.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data))
    os.environ["LMFORGE_WORK_DIR"] = str(tmp / "work")
    job = {
        "modelRef": {"uri": str(model_dir)},
        "method": "grpo",
        "data": {"uri": str(tmp / "sums.jsonl"), "validationFraction": 0},
        "grpo": {
            "numGenerations": GROUP,
            "maxCompletionLength": completion,
            "temperature": 1.0,
            "rollouts": rollouts,
            "rewards": [{"type": "answer", "extract": "lastNumber"}],
        },
        "training": {
            "maxSteps": steps,
            "microBatchSize": batch,
            "lr": LR,
            "warmupRatio": 0,
            "precision": "fp32",
            "seed": SEED,
        },
        "checkpoint": {"everySteps": EVERY},
    }
    spec = StageSpec(
        stage=StageName.ALIGN,
        store=str(tmp / "store"),
        output="runs/grpo",
        run_id="bench",
        resource={
            "apiVersion": "lmforge.io/v1alpha1",
            "kind": "AlignmentJob",
            "metadata": {"name": "bench"},
            "spec": job,
        },
    )
    ctx = StageContext.from_spec(spec, ProgressReporter(StageName.ALIGN, "bench", None, stream=open(os.devnull, "w")))
    measured: dict[str, float] = {}
    original = Trainer.train

    def timed(self: Trainer, *a: Any, **k: Any) -> Any:
        out = original(self, *a, **k)
        measured["sps"] = out.metrics["train_steps_per_second"]
        return out

    Trainer.train = timed  # type: ignore[method-assign]
    start = time.perf_counter()
    try:
        run(ctx)
    finally:
        Trainer.train = original  # type: ignore[method-assign]
    return measured["sps"], time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(THREADS)
    print(
        f"threads: torch {torch.get_num_threads()}, OMP_NUM_THREADS {os.environ['OMP_NUM_THREADS']}; "
        f"{args.steps} steps x {BATCH} rollouts ({BATCH // GROUP} prompts x {GROUP}), <= {COMPLETION} tokens",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model_dir = make_model(tmp / "base", hidden=128, layers=2, heads=4)
        data = rows(BATCH // GROUP * args.steps)
        baseline(model_dir, data, 2, tmp / "warm")  # warm caches and imports once for both
        ratios = []
        for i in range(args.rounds):
            base = baseline(model_dir, data, args.steps, tmp / f"bare-{i}")
            mine, total = ours(model_dir, data, args.steps, tmp / f"ours-{i}")
            ratios.append(mine / base)
            print(
                f"round {i + 1}: bare GRPOTrainer {base:.3f} steps/s, lmforge stage {mine:.3f} steps/s "
                f"(whole stage {total:.1f} s), ratio {mine / base:.2f}x",
                flush=True,
            )
        spread = (max(ratios) - min(ratios)) / statistics.median(ratios)
        print(
            f"ratio ours/baseline: slowest round {min(ratios):.2f}x, median {statistics.median(ratios):.2f}x, "
            f"spread {spread:.0%} (goal >= 0.95x on the slowest round: {'met' if min(ratios) >= 0.95 else 'NOT met'})"
        )


if __name__ == "__main__":
    main()
