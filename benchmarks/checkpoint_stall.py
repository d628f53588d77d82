"""Training stall per checkpoint: `checkpoint.async` vs today's synchronous save of the same state, and
the background save's bandwidth vs raw boto3 `upload_file` of the same bytes, to SeaweedFS.

Builds a DeepSpeed ZeRO-1 bf16 engine for a ~14M-parameter Llama (tests/support/seaweed.py starts
the S3 server), then per round, alternating which side goes first:
  sync:  `Checkpoints.save` (the save blocks training for serialise + upload + commit);
  async: `Checkpoints.save(wait=False)` — the stall is the time until it returns (host copy, local
         files, the thread started); then `finish()` — the bandwidth is bytes / (save start → commit);
  raw:   boto3 `upload_file` of the same files (written by DeepSpeed beforehand, not timed).
Stall ratio = async stall / sync save (goal <= 0.1); bandwidth ratio = async / raw (goal >= 0.8).
A goal counts as met when the slowest round meets it. Threads are pinned and printed. No training
step runs during the background save here, so the bandwidth is the save's own; on a loaded machine
(other jobs share the cores) figures vary — every round and the spread are printed.

    python benchmarks/checkpoint_stall.py [--hidden 384 --layers 6 --rounds 3 --threads 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (both sides)")
    args = parser.parse_args()

    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import deepspeed
    import torch
    from support.seaweed import start_seaweed

    from lmforge.api.pretrain import Architecture
    from lmforge.store import open_store
    from lmforge.trainer.models import build_model, llama_config
    from lmforge.trainer.pretrain.checkpoint import Checkpoints
    from lmforge.trainer.pretrain.dist import process_group

    torch.set_num_threads(args.threads)
    print(
        f"threads: torch {torch.get_num_threads()}, OMP_NUM_THREADS {os.environ['OMP_NUM_THREADS']}, "
        f"cores {len(os.sched_getaffinity(0))}"
    )
    arch = Architecture(num_layers=args.layers, hidden_size=args.hidden, num_heads=args.hidden // 64, head_dim=64)
    with start_seaweed() as server, tempfile.TemporaryDirectory() as tmp, process_group(False) as world:
        for k, v in server.env().items():
            os.environ[k] = v
        root = Path(tmp)
        model = build_model(llama_config(arch, vocab_size=args.vocab, context_length=256), seed=0)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        engine, _, _, _ = deepspeed.initialize(
            model=model,
            optimizer=opt,
            config={"train_micro_batch_size_per_gpu": 1, "bf16": {"enabled": True}, "zero_optimization": {"stage": 1}},
        )
        x = torch.randint(0, args.vocab, (1, 16))
        engine.backward(engine(input_ids=x, labels=x).loss)
        engine.step()  # materialise optimizer state

        sync = Checkpoints(open_store(f"s3://{server.bucket}/sync"), root / "sync", world, keep_last=2)
        background = Checkpoints(
            open_store(f"s3://{server.bucket}/async"), root / "async", world, keep_last=2, asynchronous=True
        )
        raw_dir = root / "raw"
        engine.save_checkpoint(str(raw_dir), tag="t", save_latest=False)
        files = sorted(p for p in (raw_dir / "t").iterdir() if p.is_file())
        size = sum(p.stat().st_size for p in files)
        client = server.client()

        def run_sync(step: int) -> dict[str, float]:
            t0 = time.perf_counter()
            assert sync.save(engine, step, {"step": step}, {})
            return {"stall": time.perf_counter() - t0}

        def run_async(step: int) -> dict[str, float]:
            t0 = time.perf_counter()
            background.save(engine, step, {"step": step}, {}, wait=False)
            stall = time.perf_counter() - t0
            assert background.finish()
            return {"stall": stall, "total": time.perf_counter() - t0}

        def run_raw(step: int) -> dict[str, float]:
            t0 = time.perf_counter()
            for p in files:
                client.upload_file(str(p), server.bucket, f"raw/{step}/{p.name}")
            return {"total": time.perf_counter() - t0}

        for fn in (run_sync, run_async, run_raw):  # untimed warm-up: SeaweedFS allocates volumes first
            fn(1)
        rounds: list[dict[str, dict[str, float]]] = []
        for r in range(args.rounds):
            order = [run_sync, run_async, run_raw] if r % 2 == 0 else [run_raw, run_async, run_sync]
            rounds.append({fn.__name__[4:]: fn(r + 2) for fn in order})
        shutil.rmtree(root, ignore_errors=True)

    mb = size / 1e6
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(
        f"checkpoint: {mb:.0f} MB in {len(files)} files ({params:.1f}M parameters, ZeRO-1 bf16); "
        f"{args.rounds} alternating rounds"
    )
    stalls, bws = [], []
    for i, r in enumerate(rounds):
        stall = r["async"]["stall"] / r["sync"]["stall"]
        bw = r["raw"]["total"] / r["async"]["total"]
        stalls.append(stall)
        bws.append(bw)
        print(
            f"  round {i + 1}: sync save {r['sync']['stall']:.3f} s | async stall {r['async']['stall']:.3f} s, "
            f"background save {r['async']['total']:.2f} s ({mb / r['async']['total']:.0f} MB/s) | boto3 "
            f"{r['raw']['total']:.2f} s ({mb / r['raw']['total']:.0f} MB/s) | stall ratio {stall:.3f}x, "
            f"bandwidth ratio {bw:.2f}x"
        )
    print(f"stall ratio async/sync: worst {max(stalls):.3f}x, best {min(stalls):.3f}x (goal <= 0.1x on the worst)")
    print(f"bandwidth async/boto3: worst {min(bws):.2f}x, best {max(bws):.2f}x (goal >= 0.8x on the worst)")
    print(f"goals met on the slowest round: stall {max(stalls) <= 0.1}, bandwidth {min(bws) >= 0.8}")


if __name__ == "__main__":
    main()
