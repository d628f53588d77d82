"""Tokenize + pack + write shards (ours) against bare `tokenizers` `encode_batch_fast` on the same text.

Both use the same byte-level BPE (4,096 ids) and batches of 1,024 documents; ours adds EOS, packs into
uint16 rows of 256 tokens, writes the raw packed file, then the shuffled shard files with their hashes
into a local store. The tokenizer's Rust thread pool (`RAYON_NUM_THREADS`, `TOKENIZERS_PARALLELISM`)
and the OpenMP/torch threads are set here, before `tokenizers` is imported, so both sides run with
the same threads whatever the caller's environment says (an exported `TOKENIZERS_PARALLELISM=false`
made the bare side single-threaded and the ratio meaningless). Rounds alternate bare/ours; each round
is printed with its ratio, and the goal (≥ 1.0× bare) must hold on the slowest round.

Usage: python benchmarks/dataset_tokenize.py [--mb 30] [--rounds 3] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # lmforge itself, without an install

GOAL = 1.0


def pin_threads(threads: int) -> dict[str, str]:
    """Set the thread knobs both sides share; must run before `tokenizers` (its pool reads
    RAYON_NUM_THREADS once) and numpy/torch are imported."""
    pinned = {
        "RAYON_NUM_THREADS": str(threads),
        "TOKENIZERS_PARALLELISM": "true",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
    }
    os.environ.update(pinned)
    return pinned


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="tokenizer (Rust) threads, both sides")
    args = ap.parse_args()
    pinned = pin_threads(args.threads)

    import json

    from dataset_corpus import generate
    from tokenizers import Tokenizer

    from lmforge.api.dataset import Tokenizer as TokenizerSpec
    from lmforge.store import LocalStore
    from lmforge.trainer.dataset.build import BATCH, tokenize_and_pack, write_all_shards
    from lmforge.trainer.dataset.tokenizer import train

    print("threads: " + " ".join(f"{k}={v}" for k, v in pinned.items()) + f" (cpus={os.cpu_count()})")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        generate(root / "data", args.mb, files=1, dup_fraction=0.0)
        texts = [json.loads(line)["text"] for line in open(root / "data" / "part-000.jsonl")]
        mb = sum(len(t.encode()) for t in texts) / 1e6
        tok_dir = train(texts[:2000], TokenizerSpec(vocab_size=4096), root / "tok")
        tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))

        def bare() -> tuple[float, int]:
            start = time.monotonic()
            tokens = 0
            for i in range(0, len(texts), BATCH):
                batch = tok.encode_batch_fast(texts[i : i + BATCH], add_special_tokens=False)
                tokens += sum(len(e.ids) for e in batch)
            return time.monotonic() - start, tokens

        def ours(rep: int) -> tuple[float, float, int, int]:
            start = time.monotonic()
            stats = tokenize_and_pack(
                ((i, "s", t) for i, t in enumerate(texts)), tok, root / "packed.bin", 256, 4096, 1
            )
            packed = time.monotonic() - start
            write_all_shards(
                LocalStore(root / "store"),
                root / "packed.bin",
                stats.rows,
                256,
                4096,
                0.01,
                1234,
                8192,
                f"bench-{rep}",
                root / "scratch",
            )
            return time.monotonic() - start, packed, stats.tokens, stats.rows

        bare()  # warm-up: the Rust pool starts, the pages of `texts` are touched
        ratios = []
        for rep in range(args.rounds):  # alternate, so load from other processes hits both sides alike
            bare_s, tokens = bare()
            ours_s, pack_s, our_tokens, rows = ours(rep)
            ratios.append(bare_s / ours_s)
            print(
                f"round {rep}: bare {bare_s:.2f} s ({mb / bare_s:.2f} MB/s, {tokens / bare_s / 1e6:.2f} M tok/s)  "
                f"ours {ours_s:.2f} s (tokenize+pack {pack_s:.2f} s, shards {ours_s - pack_s:.2f} s; "
                f"{mb / ours_s:.2f} MB/s)  ratio {ratios[-1]:.2f}x"
            )
        print(f"text: {mb:.1f} MB, {len(texts)} documents, {tokens} tokens (ours {our_tokens} with EOS, {rows} rows)")
        print(
            f"ratio lmforge / bare: slowest round {min(ratios):.2f}x, best {max(ratios):.2f}x, "
            f"spread {max(ratios) - min(ratios):.2f}; goal >= {GOAL:.1f}x on the slowest round: "
            f"{'met' if min(ratios) >= GOAL else 'NOT met'}"
        )


if __name__ == "__main__":
    main()
