"""Pretraining throughput: the PretrainJob stage's default configuration, and with compile forced, vs
the fastest Hugging Face `Trainer` configuration — same model, data and batch, same threads.

Model: the 5.3M-parameter Llama of docs/facts.md (hidden 256, 4 layers, 8 heads × 32, vocab 4096), seq
256, micro-batch 8, random tokens, one process with every core as a thread on both sides. Ours runs the
real stage (`python -m lmforge.trainer pretrain`: DeepSpeed ZeRO-1, bf16, eager attention and fused
AdamW on the CPU) twice per round:
- default: the spec leaves `training.compile` unset (`auto`) and sets a realistic length — a
  Chinchilla-optimal budget of 20 tokens per parameter (~106M tokens, ~52k steps) — so auto compiles
  if compiling pays on this machine; its decision line is printed. The first round finds no cached
  compile cost (a fresh `$LMFORGE_CACHE`) and measures it; later rounds reuse it.
- forced: `training.compile: true`.
Each is stopped with SIGTERM (the stage's preemption path) once it has trained `--warmup` + `--steps`
steps; its tokens/s is the stage's own figure over its last 20 steps, so start-up, the timed eager
steps and compilation are outside the window. The baseline is `Trainer` in fp32 and in bf16, timed over
`--steps` steps after `--warmup`; the fastest of the two in each round is the reference. On a CPU
without native bf16 (no AVX512-BF16/AMX) the stage trains in fp32 (trainer/precision.py) and Trainer's
bf16, emulated there at ~1/100 of fp32's speed, is left out (said in the output). The four
configurations alternate in each of `--rounds` rounds; every round's ratios are printed, with the
spread, and a goal (≥ 1.5× default, ≥ 1.8× forced) is met when the slowest round meets it.

    python benchmarks/pretrain_throughput.py [--rounds 3] [--steps 20] [--warmup 10]

The cost of MLflow tracking on this same stage is benchmarks/tracking_overhead.py.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from lmforge.api.contract import StageSpec

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

VOCAB, SEQ, MICRO, HIDDEN, LAYERS, HEADS = 4096, 256, 8, 256, 4, 8
TOKENS_PER_PARAMETER = 20
"""The default run's length: Chinchilla's compute-optimal budget (Hoffmann et al. 2022)."""
GOAL_DEFAULT, GOAL_FORCED = 1.5, 1.8


def make_inputs(root: Path, rows: int) -> tuple[Path, Path]:
    """A word-level tokenizer of exactly VOCAB tokens and random-token shards in the Dataset format."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<|bos|>": 0, "<|eos|>": 1, "<|pad|>": 2, **{f"w{i}": i for i in range(3, VOCAB)}}
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<|pad|>")),
        bos_token="<|bos|>",
        eos_token="<|eos|>",
        pad_token="<|pad|>",
    )
    tok.save_pretrained(root / "tokenizer")
    shards = root / "shards"
    shards.mkdir(parents=True)
    data = np.random.default_rng(0).integers(3, VOCAB, size=(rows, SEQ), dtype=np.uint16)
    data[:64].tofile(shards / "val-00000.bin")
    data[64:].tofile(shards / "train-00000.bin")
    from lmforge.trainer.shards import FORMAT, INDEX, ShardEntry, ShardIndex

    (shards / INDEX).write_bytes(
        ShardIndex(
            format=FORMAT,
            dtype="uint16",
            seq_length=SEQ,
            vocab_size=VOCAB,
            bos_id=0,
            eos_id=1,
            pad_id=2,
            seed=0,
            train=[ShardEntry(file="train-00000.bin", sequences=rows - 64)],
            validation=[ShardEntry(file="val-00000.bin", sequences=64)],
            tokens={"train": (rows - 64) * SEQ, "validation": 64 * SEQ},
        ).to_bytes()
    )
    return root / "tokenizer", shards


def bench_spec(root: Path, steps: int, compile_: bool | str | None, out: str, tokens: int | None = None) -> StageSpec:
    """The PretrainJob stage spec of this benchmark's model and batch, over `make_inputs`' artifacts:
    `steps` optimizer steps, or a `tokens` budget; `compile_` None leaves `training.compile` unset."""
    from lmforge.api.contract import InputArtifacts, StageName, StageSpec
    from lmforge.store import ArtifactWriter, LocalStore

    store = LocalStore(root / "store")
    arts = {}
    for name in ("tokenizer", "shards"):
        w = ArtifactWriter(store, f"ds/{name}", clear_existing=True)
        w.add_dir(root / name)
        w.commit(name)
        arts[name] = store.url(f"ds/{name}")
    training: dict[str, Any] = {"microBatchSize": MICRO, "precision": "bf16"}
    training.update({"tokens": tokens} if tokens is not None else {"maxSteps": steps})
    if compile_ is not None:
        training["compile"] = compile_
    resource = {
        "apiVersion": "lmforge.io/v1alpha1",
        "kind": "PretrainJob",
        "metadata": {"name": "bench"},
        "spec": {
            "datasetRef": {"name": "d"},
            "model": {
                "numLayers": LAYERS,
                "hiddenSize": HIDDEN,
                "numHeads": HEADS,
                "headDim": 32,
                "intermediateSize": 3 * HIDDEN,
                "tieEmbeddings": True,
            },
            "training": training,
            "optimizer": {"warmupSteps": 2},
            "checkpoint": {"everySteps": 10**6},
            "validation": {"everySteps": 10**6, "batches": 1},
        },
    }
    return StageSpec(
        stage=StageName.PRETRAIN,
        resource=resource,
        store=store.uri,
        output=out,
        run_id=out,
        inputs={"Dataset/d": InputArtifacts(kind="Dataset", name="d", artifacts=arts)},
    )


def arch() -> Any:
    from lmforge.api.pretrain import Architecture

    return Architecture(
        num_layers=LAYERS,
        hidden_size=HIDDEN,
        num_heads=HEADS,
        head_dim=32,
        intermediate_size=3 * HIDDEN,
        tie_embeddings=True,
    )


@dataclass
class Ours:
    tokens_per_second: float
    step: int
    decision: list[str]
    """The stage's `training.compile auto` log lines."""


def ours(root: Path, out: str, compile_: bool | None, tokens: int, stop_at: int, env: dict[str, str]) -> Ours:
    """The real stage as its own process on a `tokens` budget, stopped with SIGTERM once a progress
    record shows `stop_at` steps done; tokens/s is the stage's windowed figure of its last record."""
    from lmforge.api.contract import RecordType, StageName, parse_record, stage_command

    spec_file = root / f"{out}.json"
    spec_file.write_text(bench_spec(root, 0, compile_, out, tokens=tokens).model_dump_json(by_alias=True))
    err = root / f"{out}.err"
    with err.open("w") as stderr:
        proc = subprocess.Popen(
            stage_command(StageName.PRETRAIN, str(spec_file), sys.executable),
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=env,
            cwd=REPO,
        )
        assert proc.stdout is not None
        best: tuple[int, float] | None = None
        for line in proc.stdout:
            record = parse_record(line)
            if record is None or record.type is not RecordType.PROGRESS or "tokens_per_second" not in record.metrics:
                continue
            if record.step >= stop_at and best is None:
                best = (record.step, record.metrics["tokens_per_second"])
                proc.send_signal(signal.SIGTERM)  # checkpoint, then a retryable exit
        proc.wait(timeout=600)
    text = err.read_text()
    if best is None:
        raise RuntimeError(f"lmforge run {out} ended before step {stop_at}:\n{text[-2000:]}")
    lines = [ln.split("lmforge: ", 1)[1] for ln in text.splitlines() if "training.compile auto:" in ln]
    return Ours(best[1], best[0], lines)


HF_SCRIPT = r"""
import json, os, sys, time, torch
import numpy as np
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments, TrainerCallback
VOCAB, SEQ, MICRO, HIDDEN, LAYERS, HEADS = %(consts)s
steps, bf16, rows, WARMUP = int(sys.argv[1]), sys.argv[2] == "bf16", int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
data = np.random.default_rng(0).integers(3, VOCAB, size=(rows, SEQ)).astype(np.int64)
class DS(torch.utils.data.Dataset):
    def __len__(self): return rows
    def __getitem__(self, i): x = torch.from_numpy(data[i]); return {"input_ids": x, "labels": x}
class Clock(TrainerCallback):
    marks = []
    def on_step_end(self, args, state, control, **kw): self.marks.append((time.perf_counter(), state.global_step))
torch.manual_seed(0)
cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=3 * HIDDEN, num_hidden_layers=LAYERS,
                  num_attention_heads=HEADS, num_key_value_heads=HEADS, head_dim=32, max_position_embeddings=SEQ,
                  tie_word_embeddings=True, use_cache=False)
args = TrainingArguments(output_dir=os.environ["OUT"], per_device_train_batch_size=MICRO, max_steps=steps,
                         bf16=bf16, use_cpu=True, report_to=[], save_strategy="no", logging_strategy="no",
                         dataloader_num_workers=0, learning_rate=3e-4, disable_tqdm=True)
clock = Clock()
Trainer(model=LlamaForCausalLM(cfg), args=args, train_dataset=DS(), callbacks=[clock]).train()
world = int(os.environ.get("WORLD_SIZE", "1"))
if int(os.environ.get("RANK", "0")) == 0:
    (t0, s0), (t1, s1) = clock.marks[WARMUP], clock.marks[-1]
    print("TOKENS_PER_SECOND", (s1 - s0) * MICRO * SEQ * world / (t1 - t0))
"""


def hf_trainer(root: Path, steps: int, warmup: int, precision: str, env: dict[str, str]) -> float:
    """tokens/s of `Trainer` over `steps` steps after `warmup`, one process."""
    script = root / "hf_bench.py"
    script.write_text(HF_SCRIPT % {"consts": repr((VOCAB, SEQ, MICRO, HIDDEN, LAYERS, HEADS))})
    cmd = [sys.executable, str(script), str(steps + warmup), precision, "2048", str(warmup)]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env={**env, "OUT": str(root / f"hf-{precision}")}, timeout=600
    )
    for line in proc.stdout.splitlines():
        if line.startswith("TOKENS_PER_SECOND"):
            return float(line.split()[1])
    raise RuntimeError(f"HF Trainer run failed:\n{proc.stderr[-2000:]}")


def thread_env(threads: int) -> dict[str, str]:
    """The same pinned thread settings for both sides (torch reads OMP_NUM_THREADS; the stage's own
    default, cores / local processes, is the same number here)."""
    return {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": str(REPO),
        "PYTHONUNBUFFERED": "1",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per run (the stage's window is 20)")
    parser.add_argument("--warmup", type=int, default=10, help="steps before the timed ones")
    args = parser.parse_args()
    import torch

    from lmforge.api.training import Precision
    from lmforge.trainer.precision import cpu_has_native_bf16
    from lmforge.trainer.pretrain.metrics import measured_matmul_flops

    threads = len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    a = arch()
    params = a.parameter_count(VOCAB)
    tokens = TOKENS_PER_PARAMETER * params
    per_token = a.flops_per_token(VOCAB, SEQ)
    trained = Precision.BF16 if cpu_has_native_bf16() else Precision.FP32  # what the stage trains in here
    ceiling = measured_matmul_flops(trained, seconds=1.0)
    print(
        f"model: {params / 1e6:.2f}M parameters, seq {SEQ}, micro-batch {MICRO}, {per_token / 1e6:.1f} MFLOP/token; "
        f"{trained.value} matmul ceiling {ceiling / 1e9:.1f} GFLOP/s"
    )
    print(
        f"threads: OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads} torch.set_num_threads({threads}) "
        "TOKENIZERS_PARALLELISM=false, one process, both sides"
    )
    print(
        f"default run length: {tokens / 1e6:.0f}M tokens ({TOKENS_PER_PARAMETER} per parameter) = "
        f"{-(-tokens // (MICRO * SEQ))} steps; each run stopped after {args.warmup + args.steps} steps"
    )
    env = thread_env(threads)
    hf_sides = ["hf-fp32", "hf-bf16"]
    if not cpu_has_native_bf16():
        # Trainer's bf16 is CPU autocast, emulated here (~100x slower than fp32): it cannot be the
        # fastest configuration, and timing it would take longer than the rest of the benchmark.
        hf_sides = ["hf-fp32"]
        print("this CPU has no native bf16 (AVX512-BF16/AMX): HF Trainer bf16 left out; the stage trains in fp32")
    rows: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        env["LMFORGE_CACHE"] = str(root / "cache")  # round 1 measures the compile cost, later rounds reuse it
        env["LMFORGE_WORK_DIR"] = str(root / "work")
        make_inputs(root, 2048)
        stop_at = args.warmup + args.steps
        for r in range(1, args.rounds + 1):
            row: dict[str, float] = {}
            order = [n for n in ["hf-fp32", "default", "hf-bf16", "forced"] if n in hf_sides or not n.startswith("hf-")]
            if r % 2 == 0:
                order.reverse()
            for name in order:
                if name.startswith("hf-"):
                    row[name] = hf_trainer(root, args.steps, args.warmup, name[3:], env)
                else:
                    run = ours(root, f"{name}-{r}", None if name == "default" else True, tokens, stop_at, env)
                    row[name] = run.tokens_per_second
                    for line in run.decision:
                        print(f"  round {r} {name}: {line}")
                print(f"  round {r} {name:8s} {row[name]:8.0f} tokens/s", flush=True)
            best_hf = max(row[n] for n in hf_sides)
            row["ratio-default"], row["ratio-forced"] = row["default"] / best_hf, row["forced"] / best_hf
            hf = ", ".join(f"HF {n[3:]} {row[n]:.0f}" for n in hf_sides)
            print(
                f"round {r}: {hf}, lmforge default "
                f"{row['default']:.0f} ({row['ratio-default']:.2f}x), compile forced {row['forced']:.0f} "
                f"({row['ratio-forced']:.2f}x) tokens/s",
                flush=True,
            )
            rows.append(row)
    for name in (*hf_sides, "default", "forced"):
        v = [row[name] for row in rows]
        print(
            f"{name:8s} median {statistics.median(v):8.0f} tokens/s  min {min(v):.0f} max {max(v):.0f}  "
            f"{statistics.median(v) * per_token / ceiling:.0%} of the matmul ceiling"
        )
    for name, goal in (("default", GOAL_DEFAULT), ("forced", GOAL_FORCED)):
        v = [row[f"ratio-{name}"] for row in rows]
        verdict = "met" if min(v) >= goal else "NOT met"
        print(
            f"ratio lmforge {name} / fastest HF Trainer: slowest round {min(v):.2f}x, median "
            f"{statistics.median(v):.2f}x, spread {min(v):.2f}-{max(v):.2f}x over {len(v)} rounds "
            f"(goal >= {goal}x: {verdict})"
        )


if __name__ == "__main__":
    main()
