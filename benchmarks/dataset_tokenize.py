"""Tokenize + pack + write shards (ours) against bare `tokenizers` `encode_batch_fast` on the same text.

Both use the same byte-level BPE (4,096 ids) and batches of 1,024 documents; ours adds EOS, packs into
uint16 rows of 256 tokens, writes the raw packed file, then the shuffled shard files with their hashes
into a local store. The bare side builds each encoding's ids list too (`len(e.ids)`), as any user of
the ids must.

Every timed run is a fresh child process whose environment the parent sets: the tokenizer's Rust pool
(`RAYON_NUM_THREADS`, read once when the pool starts, and `TOKENIZERS_PARALLELISM=true`) and the
OpenMP/BLAS threads are the same for both sides whatever the caller exported; an exported
`TOKENIZERS_PARALLELISM=false` used to make the bare side single-threaded and the ratio meaningless.
Each child prints the cores it actually kept busy (CPU seconds / wall seconds), which shows the pool
really ran on the pinned threads. Rounds alternate the two sides (and which goes first), each round is
printed with its ratio, and the goal (ours ≥ 1.0× bare) must hold on the slowest round.

Usage: python benchmarks/dataset_tokenize.py [--mb 30] [--rounds 3] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # lmforge itself, without an install

GOAL = 1.0
SEQ, VOCAB, EOS = 256, 4096, 1
WARMUP_BATCHES = 4  # encoded (untimed) before each timed run: the Rust pool starts, the BPE cache fills


def pinned_env(threads: int) -> dict[str, str]:
    """The thread knobs both sides share, for the children's environment (the Rust pool reads
    RAYON_NUM_THREADS once, when it starts)."""
    return {
        "RAYON_NUM_THREADS": str(threads),
        "TOKENIZERS_PARALLELISM": "true",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
    }


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process
    return usage.ru_utime + usage.ru_stime


def child(side: str, root: Path, tag: str) -> dict[str, Any]:
    """One timed run of `side` in this (fresh) process; returns its figures."""
    from tokenizers import Tokenizer

    from lmforge.store import LocalStore
    from lmforge.trainer.dataset.build import BATCH, tokenize_and_pack, write_all_shards

    texts = [json.loads(line)["text"] for line in open(root / "data" / "part-000.jsonl")]
    tok = Tokenizer.from_file(str(root / "tok" / "tokenizer.json"))
    for i in range(0, min(len(texts), WARMUP_BATCHES * BATCH), BATCH):
        tok.encode_batch_fast(texts[i : i + BATCH], add_special_tokens=False)
    cpu, start = _cpu_seconds(), time.monotonic()
    if side == "bare":
        tokens = 0
        for i in range(0, len(texts), BATCH):
            batch = tok.encode_batch_fast(texts[i : i + BATCH], add_special_tokens=False)
            tokens += sum(len(e.ids) for e in batch)
        seconds = time.monotonic() - start
        return {"seconds": seconds, "cores": (_cpu_seconds() - cpu) / seconds, "tokens": tokens}

    work = root / f"ours-{tag}"
    stats = tokenize_and_pack(((i, "s", t) for i, t in enumerate(texts)), tok, work / "packed.bin", SEQ, VOCAB, EOS)
    packed = time.monotonic() - start
    index, _ = write_all_shards(
        LocalStore(work / "store"), work / "packed.bin", stats.rows, SEQ, VOCAB, 0.01, 1234, 8192, tag, work / "scratch"
    )
    seconds = time.monotonic() - start
    shards = [e.sha256 for split in ("validation", "train") for e in index[split]]
    return {
        "seconds": seconds,
        "cores": (_cpu_seconds() - cpu) / seconds,
        "pack_seconds": packed,
        "tokens": stats.tokens,
        "documents": stats.documents,
        "rows": stats.rows,
        "shards": shards,
    }


def run_child(side: str, root: Path, tag: str, env: dict[str, str]) -> dict[str, Any]:
    (root / f"ours-{tag}").mkdir(exist_ok=True)
    proc = subprocess.run(
        [sys.executable, __file__, "--child", side, "--root", str(root), "--tag", tag],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode:
        sys.exit(f"{side} child failed:\n{proc.stderr[-3000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="tokenizer (Rust) threads, both sides")
    ap.add_argument("--child", choices=("bare", "ours"), help=argparse.SUPPRESS)
    ap.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--tag", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.root, args.tag)))
        return

    caller = os.environ.get("TOKENIZERS_PARALLELISM")
    pinned = pinned_env(args.threads)
    env = {**os.environ, **pinned}
    os.environ.update(pinned)  # the corpus and tokenizer set-up below runs on the same threads
    print(
        "threads (both sides, each run a fresh process): "
        + " ".join(f"{k}={v}" for k, v in pinned.items())
        + f" (cpus={os.cpu_count()}; caller's TOKENIZERS_PARALLELISM={caller if caller is not None else '<unset>'})"
    )

    from dataset_corpus import generate

    from lmforge.api.dataset import Tokenizer as TokenizerSpec
    from lmforge.trainer.dataset.tokenizer import train

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        generate(root / "data", args.mb, files=1, dup_fraction=0.0)
        texts = [json.loads(line)["text"] for line in open(root / "data" / "part-000.jsonl")]
        mb = sum(len(t.encode()) for t in texts) / 1e6
        train(texts[:2000], TokenizerSpec(vocab_size=VOCAB), root / "tok")

        ratios, shards = [], set()
        for rep in range(args.rounds):  # alternate sides and their order, so drift and load hit both alike
            order = ("bare", "ours") if rep % 2 == 0 else ("ours", "bare")
            got = {side: run_child(side, root, str(rep), env) for side in order}
            bare, ours = got["bare"], got["ours"]
            if ours["tokens"] != bare["tokens"] + ours["documents"]:
                sys.exit(f"token counts differ: bare {bare['tokens']}, ours {ours['tokens']} with EOS")
            shards.add(tuple(ours["shards"]))
            ratios.append(bare["seconds"] / ours["seconds"])
            print(
                f"round {rep} ({' then '.join(order)}): bare {bare['seconds']:.2f} s ({mb / bare['seconds']:.2f} MB/s, "
                f"{bare['tokens'] / bare['seconds'] / 1e6:.2f} M tok/s, {bare['cores']:.2f} cores busy)  "
                f"ours {ours['seconds']:.2f} s (tokenize+pack {ours['pack_seconds']:.2f} s, "
                f"shards {ours['seconds'] - ours['pack_seconds']:.2f} s; {mb / ours['seconds']:.2f} MB/s, "
                f"{ours['cores']:.2f} cores busy)  ratio {ratios[-1]:.2f}x",
                flush=True,
            )
        if len(shards) != 1:
            sys.exit("the shards differ between rounds")
        print(
            f"text: {mb:.1f} MB, {len(texts)} documents, {bare['tokens']} tokens "
            f"(ours {ours['tokens']} with EOS, {ours['rows']} rows, {len(ours['shards'])} shards, same bytes every round)"
        )
        print(
            f"ratio lmforge / bare: slowest round {min(ratios):.2f}x, best {max(ratios):.2f}x, "
            f"spread {max(ratios) - min(ratios):.2f}; goal >= {GOAL:.1f}x on the slowest round: "
            f"{'met' if min(ratios) >= GOAL else 'NOT met'}"
        )


if __name__ == "__main__":
    main()
