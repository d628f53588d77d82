"""Checkpoint save + load through the PretrainJob's checkpoint store vs raw boto3 of the same bytes.

Starts a SeaweedFS S3 server (tests/support/seaweed.py), builds a DeepSpeed ZeRO-1 bf16 engine for a
~14M-parameter Llama (checkpoint ≈ 16 bytes/parameter: bf16 weights + fp32 master, momentum and
variance), then times
  ours: `Checkpoints.save` (DeepSpeed's files serialised straight into parallel multipart uploads with
        their SHA-256 computed on the stream, manifest, `latest`, pruning) and `Checkpoints.resume` (pointer,
        download with the SHA-256 verified on the stream, DeepSpeed load);
  raw:  boto3 `upload_file` / `download_file` of the same files to the same server.
One untimed round of each warms the server up; then `--rounds` alternating rounds, medians printed.
Prints the time of each, the bandwidth, and raw time / our time (goal ≥ 0.8: at least 80% of raw).

    python benchmarks/pretrain_checkpoint.py [--hidden 384 --layers 6 --rounds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
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
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds of each (medians are printed)")
    args = parser.parse_args()

    import deepspeed
    import torch
    from support.seaweed import start_seaweed

    from lmforge.api.pretrain import Architecture
    from lmforge.store import open_store
    from lmforge.trainer.models import build_model, llama_config
    from lmforge.trainer.pretrain.checkpoint import Checkpoints
    from lmforge.trainer.pretrain.dist import process_group

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

        store = open_store(f"s3://{server.bucket}/ours")
        ckpts = Checkpoints(store, root / "local", world, keep_last=2)
        raw_dir = root / "raw"
        engine.save_checkpoint(str(raw_dir), tag="t", save_latest=False)
        files = sorted(p for p in (raw_dir / "t").iterdir() if p.is_file())
        size = sum(p.stat().st_size for p in files)
        client = server.client()
        down = root / "down"
        down.mkdir()

        def ours(step: int) -> tuple[float, float]:
            t0 = time.perf_counter()
            assert ckpts.save(engine, step, {"step": step}, {})
            save_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            assert ckpts.resume(engine) is not None
            return save_s, time.perf_counter() - t0

        def raw(step: int) -> tuple[float, float]:
            t0 = time.perf_counter()
            for p in files:
                client.upload_file(str(p), server.bucket, f"raw/{step}/{p.name}")
            up_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            for p in files:
                client.download_file(server.bucket, f"raw/{step}/{p.name}", str(down / p.name))
            return up_s, time.perf_counter() - t0

        # One untimed round of each first: SeaweedFS allocates its volumes on the first writes, which
        # would otherwise be charged to whichever side runs first. Then alternate, and take medians.
        ours(1)
        raw(1)
        timings: dict[str, list[tuple[float, float]]] = {"ours": [], "raw": []}
        for r in range(args.rounds):
            first, second = (ours, raw) if r % 2 == 0 else (raw, ours)
            for fn in (first, second):
                timings["ours" if fn is ours else "raw"].append(fn(r + 2))
        save_s, load_s = (statistics.median(t[i] for t in timings["ours"]) for i in (0, 1))
        up_s, down_s = (statistics.median(t[i] for t in timings["raw"]) for i in (0, 1))

        t0 = time.perf_counter()
        engine.save_checkpoint(str(root / "ser"), tag="t", save_latest=False)
        ser_s = time.perf_counter() - t0  # DeepSpeed serialisation to local disk alone
        t0 = time.perf_counter()
        engine.load_checkpoint(str(root / "ser"), tag="t")
        deser_s = time.perf_counter() - t0
        shutil.rmtree(root, ignore_errors=True)

    mb = size / 1e6
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(
        f"checkpoint: {mb:.0f} MB in {len(files)} files ({params:.1f}M parameters, ZeRO-1 bf16); "
        f"medians of {args.rounds} alternating rounds"
    )
    for i, ((s_o, l_o), (s_r, l_r)) in enumerate(zip(timings["ours"], timings["raw"], strict=True)):
        print(
            f"  round {i + 1}: ours {s_o:.2f}+{l_o:.2f} s, boto3 {s_r:.2f}+{l_r:.2f} s, "
            f"save+load ratio {(s_r + l_r) / (s_o + l_o):.2f}x"
        )
    print(f"ours  save {save_s:6.2f} s ({mb / save_s:6.0f} MB/s)   load {load_s:6.2f} s ({mb / load_s:6.0f} MB/s)")
    print(f"boto3 put  {up_s:6.2f} s ({mb / up_s:6.0f} MB/s)   get  {down_s:6.2f} s ({mb / down_s:6.0f} MB/s)")
    print(
        f"ratio raw/ours: save {up_s / save_s:.2f}x, load {down_s / load_s:.2f}x, "
        f"save+load {(up_s + down_s) / (save_s + load_s):.2f}x (goal >= 0.8x)"
    )
    print(
        f"for reference, DeepSpeed (de)serialisation to local disk alone: save {ser_s:.2f} s, load "
        f"{deser_s:.2f} s (ours overlaps the save's with the upload; the load's follows the download)"
    )


if __name__ == "__main__":
    main()
