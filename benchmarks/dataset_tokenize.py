"""Tokenize + pack + write shards (ours) against bare `tokenizers` `encode_batch` on the same text.

Both use the same byte-level BPE (4,096 ids) and batches of 1,024 documents (best of 3 runs each); ours adds EOS, packs
into uint16 rows of 256 tokens, writes the raw packed file, then the shuffled shard files with their
hashes into a local store. Goal: ≥ 0.9× the bare encode throughput.

Usage: python benchmarks/dataset_tokenize.py [--mb 50]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # lmforge itself, without an install
from dataset_corpus import generate


def main() -> None:
    import json

    from tokenizers import Tokenizer

    from lmforge.api.dataset import Tokenizer as TokenizerSpec
    from lmforge.store import LocalStore
    from lmforge.trainer.dataset.build import BATCH, tokenize_and_pack, write_all_shards
    from lmforge.trainer.dataset.tokenizer import train

    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, default=50)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        generate(root / "data", args.mb, files=1, dup_fraction=0.0)
        texts = [json.loads(line)["text"] for line in open(root / "data" / "part-000.jsonl")]
        mb = sum(len(t.encode()) for t in texts) / 1e6
        tok_dir = train(texts[:2000], TokenizerSpec(vocab_size=4096), root / "tok")
        tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))

        bare = ours = float("inf")
        for rep in range(3):  # alternate and keep the best of three: the machine is shared and noisy
            start = time.monotonic()
            tokens = 0
            for i in range(0, len(texts), BATCH):
                batch = tok.encode_batch_fast(texts[i:i + BATCH], add_special_tokens=False)
                tokens += sum(len(e.ids) for e in batch)
            bare = min(bare, time.monotonic() - start)

            start = time.monotonic()
            stats = tokenize_and_pack(((i, "s", t) for i, t in enumerate(texts)), tok, root / "packed.bin", 256,
                                      4096, 1)
            write_all_shards(LocalStore(root / "store"), root / "packed.bin", stats.rows, 256, 4096, 0.01, 1234,
                             8192, f"bench-{rep}", root / "scratch")
            ours = min(ours, time.monotonic() - start)
        print(f"text: {mb:.1f} MB, {len(texts)} documents, {tokens} tokens")
        print(f"bare encode_batch_fast: {mb / bare:.2f} MB/s, {tokens / bare / 1e6:.2f} M tokens/s ({bare:.1f} s)")
        print(f"lmforge tokenize+pack+write shards: {mb / ours:.2f} MB/s, {stats.tokens / ours / 1e6:.2f} M tokens/s "
              f"({ours:.1f} s, {stats.rows} rows)")
        print(f"ratio lmforge / bare: {bare / ours:.2f}x")


if __name__ == "__main__":
    main()
