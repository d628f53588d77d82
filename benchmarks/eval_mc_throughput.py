"""Multiple-choice scoring throughput: the EvalSuite stage's batched log-likelihoods (lm-eval's HFLM:
length-sorted batches, one forward per shared context) against a naive loop that runs one Hugging Face
forward pass per (question, choice), on the same model and items. Both must pick the same answers.

    ~/.cache/lmforge/venv/bin/python benchmarks/eval_mc_throughput.py [--items 100] [--batch 32]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support.tiny import make_model, make_tokenizer, sentences

from lmforge.trainer.evaluate import multiple_choice
from lmforge.trainer.evaluate.hf import HFBackend
from lmforge.trainer.evaluate.tasks import ChoiceRow


def naive(model: torch.nn.Module, tok: object, rows: list[ChoiceRow]) -> list[int]:
    """Per example and choice: encode, forward, sum the continuation's log-probabilities."""
    picks = []
    with torch.inference_mode():
        for row in rows:
            ctx = multiple_choice.context(row)
            lls = []
            for choice in row.choices:
                whole = tok.encode(ctx + multiple_choice.continuation(choice))  # type: ignore[attr-defined]
                n_ctx = len(tok.encode(ctx))  # type: ignore[attr-defined]
                logprobs = model(torch.tensor([whole])).logits.log_softmax(-1)[0]
                lls.append(sum(float(logprobs[i - 1, whole[i]]) for i in range(n_ctx, len(whole))))
            picks.append(max(range(len(lls)), key=lambda i: (lls[i], -i)))
    return picks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=100)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(2)
    work = Path(tempfile.mkdtemp(prefix="bench-mc-"))
    tok_dir = make_tokenizer(work / "tok", vocab_size=1024, texts=sentences(4000))
    # A 5M-parameter Llama like the FACTS throughput figures (hidden 256, 4 layers, head_dim 32).
    model_dir = make_model(work / "model", hidden=256, layers=4, heads=8, tokenizer_dir=tok_dir)
    rng = random.Random(0)
    words = " ".join(sentences(50, seed=1)).split()
    rows = [ChoiceRow(" ".join(rng.choices(words, k=rng.randint(8, 20))) + "?",
                      tuple(" ".join(rng.choices(words, k=rng.randint(1, 8))) for _ in range(4)), 0)
            for _ in range(args.items)]
    backend = HFBackend(model_dir, batch_size=args.batch, device="cpu")
    multiple_choice.evaluate(backend, rows[:8], [], lambda n: None)  # warm-up

    start = time.perf_counter()
    pairs = [(multiple_choice.context(r), multiple_choice.continuation(c)) for r in rows for c in r.choices]
    lls = [ll for ll, _ in backend.loglikelihood(pairs)]
    ours_s = time.perf_counter() - start
    ours = [multiple_choice.predict(lls[4 * i:4 * i + 4], r.choices)[0] for i, r in enumerate(rows)]

    start = time.perf_counter()
    base = naive(backend.model, backend.tokenizer, rows)
    naive_s = time.perf_counter() - start
    agree = sum(a == b for a, b in zip(ours, base, strict=True)) / len(rows)
    print(f"items={len(rows)} choices=4 batch={args.batch} threads={torch.get_num_threads()}")
    print(f"ours (lm-eval HFLM, batched):      {len(rows) / ours_s:8.1f} items/s  ({ours_s:.2f} s)")
    print(f"naive per-example HF forward loop: {len(rows) / naive_s:8.1f} items/s  ({naive_s:.2f} s)")
    print(f"speed-up: {naive_s / ours_s:.2f}x   same predictions: {agree:.1%}")


if __name__ == "__main__":
    main()
