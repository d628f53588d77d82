"""SFT samples/s: LMForge's align stage against a bare trl `SFTTrainer` on the same model and data.

Both train the same tiny Llama (hidden 256, 4 layers, ~3.7M parameters) for the same number of steps
on the same chats, one process, bf16 autocast on the CPU. The baseline is what a user would write
by hand: `SFTTrainer` on prompt/completion rows (completion-only loss). Ours is the whole stage:
reading and validating rows, tokenizing with assistant masks, checkpoints to the store, publishing.
Goal: ours ≥ 0.95× the baseline's samples/s (timed over the training loop; setup reported apart).

    ~/.cache/lmforge/venv/bin/python benchmarks/align_sft_throughput.py [--steps 40]
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

BATCH, MAX_LEN = 8, 128


def rows(n: int) -> list[dict[str, object]]:
    qs = sentences(2 * n, seed=3)
    return [{"messages": [{"role": "user", "content": qs[2 * i]}, {"role": "assistant", "content": qs[2 * i + 1]}]}
            for i in range(n)]


def baseline(model_dir: Path, data: list[dict[str, object]], steps: int, out: Path) -> float:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tok = AutoTokenizer.from_pretrained(model_dir)
    ds = Dataset.from_list([{"prompt": [r["messages"][0]], "completion": [r["messages"][1]]}  # type: ignore[index]
                            for r in data])
    config = SFTConfig(output_dir=str(out), max_steps=steps, per_device_train_batch_size=BATCH, learning_rate=1e-3,
                       bf16=True, use_cpu=True, report_to="none", save_strategy="no", logging_steps=1,
                       disable_tqdm=True, max_length=MAX_LEN, dataloader_num_workers=0, dataloader_pin_memory=False)
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(model_dir), args=config, train_dataset=ds,
                         processing_class=tok)
    return float(trainer.train().metrics["train_samples_per_second"])


def ours(model_dir: Path, data: list[dict[str, object]], steps: int, tmp: Path) -> tuple[float, float]:
    import json

    from lmforge.api.contract import StageName, StageSpec
    from lmforge.trainer.align.stage import run
    from lmforge.trainer.context import StageContext
    from lmforge.trainer.progress import ProgressReporter

    (tmp / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data))
    os.environ["LMFORGE_WORK_DIR"] = str(tmp / "work")
    job = {"modelRef": {"uri": str(model_dir)}, "method": "sft", "data": {"uri": str(tmp / "sft.jsonl"),
                                                                          "validationFraction": 0},
           "training": {"maxSteps": steps, "microBatchSize": BATCH, "lr": 1e-3, "maxLength": MAX_LEN},
           "checkpoint": {"everySteps": steps}}
    spec = StageSpec(stage=StageName.ALIGN, store=str(tmp / "store"), output="runs/sft", run_id="bench",
                     resource={"apiVersion": "lmforge.io/v1alpha1", "kind": "AlignmentJob",
                               "metadata": {"name": "bench"}, "spec": job})
    ctx = StageContext.from_spec(spec, ProgressReporter(StageName.ALIGN, "bench", None, stream=open(os.devnull, "w")))
    start = time.perf_counter()
    from transformers import Trainer

    measured: dict[str, float] = {}
    original = Trainer.train

    def timed(self: Trainer, *a: Any, **k: Any) -> Any:
        out = original(self, *a, **k)
        measured["sps"] = out.metrics["train_samples_per_second"]
        return out
    Trainer.train = timed  # type: ignore[method-assign,assignment]
    run(ctx)
    Trainer.train = original  # type: ignore[method-assign]
    return measured["sps"], time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model_dir = make_model(tmp / "base", hidden=256, layers=4, heads=8)
        data = rows(BATCH * args.steps)
        baseline(model_dir, data[:BATCH * 4], 4, tmp / "warm")  # warm caches/kernels once for both
        base_sps = baseline(model_dir, data, args.steps, tmp / "bare")
        our_sps, total = ours(model_dir, data, args.steps, tmp)
        print(f"bare trl SFTTrainer: {base_sps:.1f} samples/s")
        print(f"lmforge align sft:   {our_sps:.1f} samples/s (whole stage incl. setup and publish: {total:.1f} s)")
        print(f"ratio ours/baseline: {our_sps / base_sps:.2f}x (goal >= 0.95x)")


if __name__ == "__main__":
    main()
