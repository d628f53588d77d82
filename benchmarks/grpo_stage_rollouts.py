"""GRPO steps/s of the align stage with `rollouts: vllm` against `rollouts: generate` on the CPU:
what vLLM's CPU build buys a whole training step (rollouts, LMForge's weight sync into the engine,
the loss and the update), beside `grpo_rollouts.py`, which times the two engines alone. No goal of
its own: it is the evidence for `rollouts: auto` keeping `generate` on the CPU (docs/alignment.md).

Same stage, model (by default hidden 256, 4 layers, 3.5M parameters, fp32, as `grpo_rollouts.py`),
prompts, reward and seed on both sides; only `rollouts` differs. Each run is its own process (one
engine per process, as in a pod), rounds alternate generate / vllm. steps/s is trl's
`train_steps_per_second` (the training loop; the engine is started before it); the whole stage's
wall time, which includes vLLM's engine start and graph compilation, is printed beside it.

    flock /tmp/lmforge-bench.lock nice -n 5 python benchmarks/grpo_stage_rollouts.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

THREADS = int(os.environ.get("LMFORGE_BENCH_THREADS", "2"))
for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(THREADS)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT), str(HERE)]


def one(args: argparse.Namespace) -> None:
    """One stage run in this process; prints its figures as JSON on the last line."""
    import torch
    from grpo_steps import ours, rows

    torch.set_num_threads(THREADS)
    sps, total = ours(
        Path(args.model),
        rows(args.batch // 8 * args.steps),
        args.steps,
        Path(args.tmp),
        rollouts=args.one,
        batch=args.batch,
        completion=args.completion,
    )
    print(json.dumps({"sps": sps, "total": total, "torch_threads": torch.get_num_threads()}), flush=True)


def run_one(rollouts: str, model: Path, tmp: Path, args: argparse.Namespace) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--one", rollouts, "--model", str(model), "--tmp", str(tmp)]
    cmd += ["--steps", str(args.steps), "--batch", str(args.batch), "--completion", str(args.completion)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode:
        raise SystemExit(f"{rollouts} run failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=64, help="rollouts per step (8 per prompt)")
    parser.add_argument("--completion", type=int, default=128, help="maxCompletionLength")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--one", choices=["generate", "vllm"], help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--tmp", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        one(args)
        return
    from support.tiny import make_model

    print(
        f"threads: torch and OMP_NUM_THREADS {THREADS} on both sides, cores {len(os.sched_getaffinity(0))}; "
        f"model hidden {args.hidden}, {args.layers} layers, fp32; {args.steps} steps x {args.batch} rollouts "
        f"(8 per prompt), <= {args.completion} tokens",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model = make_model(tmp / "base", hidden=args.hidden, layers=args.layers, heads=args.hidden // 32)
        ratios = []
        for i in range(args.rounds):
            gen = run_one("generate", model, tmp / f"generate-{i}", args)
            vll = run_one("vllm", model, tmp / f"vllm-{i}", args)
            ratios.append(vll["sps"] / gen["sps"])
            print(
                f"round {i + 1}: generate {gen['sps']:.3f} steps/s (stage {gen['total']:.1f} s), "
                f"vllm {vll['sps']:.3f} steps/s (stage {vll['total']:.1f} s, engine start included), "
                f"ratio {ratios[-1]:.2f}x; torch threads {gen['torch_threads']:.0f} / {vll['torch_threads']:.0f}",
                flush=True,
            )
        spread = (max(ratios) - min(ratios)) / statistics.median(ratios)
        print(
            f"steps/s vllm/generate: slowest round {min(ratios):.2f}x, median {statistics.median(ratios):.2f}x, "
            f"spread {spread:.0%}"
        )


if __name__ == "__main__":
    main()
