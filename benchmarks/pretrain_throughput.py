"""Pretraining throughput: the PretrainJob stage vs Hugging Face `Trainer`, same model, data and batch.

Model: the 5.3M-parameter Llama of docs/facts.md (hidden 256, 4 layers, 8 heads × 32, vocab 4096), seq 256,
micro-batch 8, random tokens. Ours runs the real stage (DeepSpeed ZeRO-1 engine, bf16, eager attention
and fused AdamW on CPU, one process with all cores as threads; with and without torch.compile); the
baseline is `Trainer` in fp32 and bf16 on one process. With --ddp both also run as two processes of
cores / 2 threads under torchrun. Throughput excludes the first steps (warm-up,
compilation). Prints tokens/s, the ratio to the fastest Trainer configuration, and achieved model
FLOP/s against this machine's measured bf16 matmul ceiling.

    python benchmarks/pretrain_throughput.py [--steps 30] [--ddp]

The cost of MLflow tracking on this same stage is benchmarks/tracking_overhead.py.
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from lmforge.api.contract import StageSpec

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

VOCAB, SEQ, MICRO, HIDDEN, LAYERS, HEADS = 4096, 256, 8, 256, 4, 8
WARMUP = 5


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


def bench_spec(root: Path, steps: int, compile_: bool, out: str) -> StageSpec:
    """The PretrainJob stage spec of this benchmark's model and batch, over `make_inputs`' artifacts."""
    from lmforge.api.contract import InputArtifacts, StageName, StageSpec
    from lmforge.store import ArtifactWriter, LocalStore

    store = LocalStore(root / "store")
    arts = {}
    for name in ("tokenizer", "shards"):
        w = ArtifactWriter(store, f"ds/{name}", clear_existing=True)
        w.add_dir(root / name)
        w.commit(name)
        arts[name] = store.url(f"ds/{name}")
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
            "training": {"maxSteps": steps, "microBatchSize": MICRO, "precision": "bf16", "compile": compile_},
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


def ours(root: Path, steps: int, compile_: bool, nproc: int = 1) -> float:
    """tokens/s of the stage's own loop (windowed, first step excluded), via the real stage: in this
    process, or under torchrun with `nproc` processes of cores / nproc threads."""
    from lmforge.api.contract import StageName, distributed_command, parse_record
    from lmforge.trainer.context import StageContext
    from lmforge.trainer.pretrain.stage import run
    from lmforge.trainer.progress import ProgressReporter

    out = f"run-{int(compile_)}-{nproc}"
    spec = bench_spec(root, steps, compile_, out)
    if nproc > 1:
        spec_file = root / f"{out}.json"
        spec_file.write_text(spec.model_dump_json(by_alias=True))
        cmd = distributed_command(
            StageName.PRETRAIN,
            str(spec_file),
            nproc_per_node=nproc,
            master_port=29600 + int(compile_),
            python=sys.executable,
        )
        env = {
            **os.environ,
            "OMP_NUM_THREADS": str(max(1, len(os.sched_getaffinity(0)) // nproc)),
            "PYTHONPATH": str(REPO),
        }
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
        for line in proc.stdout.splitlines():
            record = parse_record(line)
            if (
                record is not None
                and record.metrics
                and "tokens_per_second" in record.metrics
                and record.type.value == "result"
            ):
                return float(record.metrics["tokens_per_second"])
        raise RuntimeError(f"lmforge {nproc}-process run failed:\n{proc.stderr[-2000:]}")
    ctx = StageContext.from_spec(spec, ProgressReporter(StageName.PRETRAIN, out, None, stream=io.StringIO()))
    return float(run(ctx).metrics["tokens_per_second"])


HF_SCRIPT = r"""
import json, os, sys, time, torch
import numpy as np
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments, TrainerCallback
VOCAB, SEQ, MICRO, HIDDEN, LAYERS, HEADS, WARMUP = %(consts)s
steps, bf16, rows = int(sys.argv[1]), sys.argv[2] == "bf16", int(sys.argv[3])
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


def hf_trainer(root: Path, steps: int, precision: str, nproc: int) -> float:
    script = root / "hf_bench.py"
    script.write_text(HF_SCRIPT % {"consts": repr((VOCAB, SEQ, MICRO, HIDDEN, LAYERS, HEADS, WARMUP))})
    cmd = [sys.executable, str(script), str(steps), precision, "2048"]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", *cmd[1:]]
    env = {
        **os.environ,
        "OUT": str(root / f"hf-{precision}-{nproc}"),
        "OMP_NUM_THREADS": str(max(1, len(os.sched_getaffinity(0)) // nproc)),
    }
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    for line in proc.stdout.splitlines():
        if line.startswith("TOKENS_PER_SECOND"):
            return float(line.split()[1])
    raise RuntimeError(f"HF Trainer run failed:\n{proc.stderr[-2000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--ddp", action="store_true", help="also run Trainer and ours with 2 processes")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant of ours")
    args = parser.parse_args()
    import torch

    from lmforge.api.pretrain import Architecture
    from lmforge.api.training import Precision
    from lmforge.trainer.pretrain.metrics import measured_matmul_flops

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ["LMFORGE_CACHE"] = str(root / "cache")
        make_inputs(root, 2048)
        results: dict[str, float] = {}
        for precision in ("fp32", "bf16"):
            results[f"HF Trainer {precision} 1 process"] = hf_trainer(root, args.steps + WARMUP, precision, 1)
            if args.ddp:
                results[f"HF Trainer {precision} 2 processes"] = hf_trainer(root, args.steps + WARMUP, precision, 2)
        for compile_ in (False,) if args.no_compile else (False, True):
            suffix = " + torch.compile" if compile_ else ""
            if args.ddp:
                results[f"lmforge bf16 2 processes{suffix}"] = ours(root, args.steps, compile_, nproc=2)
            results[f"lmforge bf16 1 process{suffix}"] = ours(root, args.steps, compile_)
    ceiling = measured_matmul_flops(Precision.BF16, seconds=1.0)
    arch = Architecture(
        num_layers=LAYERS,
        hidden_size=HIDDEN,
        num_heads=HEADS,
        head_dim=32,
        intermediate_size=3 * HIDDEN,
        tie_embeddings=True,
    )
    per_token = arch.flops_per_token(VOCAB, SEQ)
    print(
        f"model: {arch.parameter_count(VOCAB) / 1e6:.2f}M parameters, seq {SEQ}, micro-batch {MICRO}, "
        f"{per_token / 1e6:.1f} MFLOP/token; bf16 matmul ceiling {ceiling / 1e9:.0f} GFLOP/s "
        f"({len(os.sched_getaffinity(0))} threads)"
    )
    for name, tps in results.items():
        print(
            f"{name:42s} {tps:8.0f} tokens/s   {tps * per_token / 1e9:6.1f} GFLOP/s "
            f"({tps * per_token / ceiling:.0%} of the matmul ceiling)"
        )
    best_hf = max(v for k, v in results.items() if k.startswith("HF"))
    best_ours = max(v for k, v in results.items() if k.startswith("lmforge"))
    print(f"ratio lmforge / fastest HF Trainer: {best_ours / best_hf:.2f}x (goal >= 1.5x)")


if __name__ == "__main__":
    main()
