"""Multiple-choice scoring throughput: the EvalSuite stage's batched log-likelihoods (one forward pass
per shared context with the choices batched behind it, `shared_context`) against a naive loop that runs
one Hugging Face forward pass per (question, choice), on the same model and items; lm-eval's own
`HFLM.loglikelihood` (length-sorted batches of whole context+choice rows: it shares a context only for
one-token choices) is timed alongside for reference. Torch/OpenMP threads are pinned and printed; the
rounds alternate and the goal (>= 3x the naive loop) must hold on the slowest round. Both must pick
the same answers and the log-likelihoods must agree within float tolerance.

    ~/.cache/lmforge/venv/bin/python benchmarks/eval_mc_throughput.py [--items 100] [--batch 32] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

THREADS = int(os.environ.get("BENCH_THREADS", os.cpu_count() or 1))
os.environ.update(OMP_NUM_THREADS=str(THREADS), MKL_NUM_THREADS=str(THREADS), TOKENIZERS_PARALLELISM="false")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support.tiny import make_model, make_tokenizer, sentences  # noqa: E402

from lmforge.trainer.evaluate import multiple_choice  # noqa: E402
from lmforge.trainer.evaluate.hf import HFBackend  # noqa: E402
from lmforge.trainer.evaluate.tasks import ChoiceRow  # noqa: E402


def naive(model: torch.nn.Module, tok: object, rows: list[ChoiceRow]) -> list[float]:
    """Per example and choice: encode, forward, sum the continuation's log-probabilities."""
    lls = []
    with torch.inference_mode():
        for row in rows:
            ctx = multiple_choice.context(row)
            for choice in row.choices:
                whole = tok.encode(ctx + multiple_choice.continuation(choice))  # type: ignore[attr-defined]
                n_ctx = len(tok.encode(ctx))  # type: ignore[attr-defined]
                logprobs = model(torch.tensor([whole])).logits.log_softmax(-1)[0]
                lls.append(sum(float(logprobs[i - 1, whole[i]]) for i in range(n_ctx, len(whole))))
    return lls


def picks(lls: list[float], rows: list[ChoiceRow]) -> list[int]:
    return [multiple_choice.predict(lls[4 * i : 4 * i + 4], r.choices)[0] for i, r in enumerate(rows)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=100)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    torch.set_num_interop_threads(1)
    work = Path(tempfile.mkdtemp(prefix="bench-mc-"))
    tok_dir = make_tokenizer(work / "tok", vocab_size=1024, texts=sentences(4000))
    # A 5M-parameter Llama like the FACTS throughput figures (hidden 256, 4 layers, head_dim 32).
    model_dir = make_model(work / "model", hidden=256, layers=4, heads=8, tokenizer_dir=tok_dir)
    rng = random.Random(0)
    words = " ".join(sentences(50, seed=1)).split()
    rows = [
        ChoiceRow(
            " ".join(rng.choices(words, k=rng.randint(8, 20))) + "?",
            tuple(" ".join(rng.choices(words, k=rng.randint(1, 8))) for _ in range(4)),
            0,
        )
        for _ in range(args.items)
    ]
    backend = HFBackend(model_dir, batch_size=args.batch, device="cpu")
    multiple_choice.evaluate(backend, rows[:8], [], lambda n: None)  # warm-up
    pairs = [(multiple_choice.context(r), multiple_choice.continuation(c)) for r in rows for c in r.choices]
    print(
        f"items={len(rows)} choices=4 batch={args.batch} torch threads={torch.get_num_threads()} "
        f"interop={torch.get_num_interop_threads()} OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} "
        f"TOKENIZERS_PARALLELISM={os.environ['TOKENIZERS_PARALLELISM']} (cpus={os.cpu_count()}; same for all sides)"
    )

    ratios = []
    for rnd in range(args.rounds):  # alternate, so load from other processes hits every side alike
        start = time.perf_counter()
        ours = [ll for ll, _ in backend.loglikelihood(pairs)]
        ours_s = time.perf_counter() - start
        start = time.perf_counter()
        base = naive(backend.model, backend.tokenizer, rows)
        naive_s = time.perf_counter() - start
        start = time.perf_counter()
        hflm = [ll for ll, _ in backend.lm.loglikelihood(backend._instances("loglikelihood", pairs), disable_tqdm=True)]
        hflm_s = time.perf_counter() - start
        agree = sum(a == b for a, b in zip(picks(ours, rows), picks(base, rows), strict=True)) / len(rows)
        diff = max(
            max(abs(a - b) for a, b in zip(ours, base, strict=True)),
            max(abs(a - b) for a, b in zip(ours, hflm, strict=True)),
        )
        ratios.append(naive_s / ours_s)
        print(
            f"round {rnd}: ours {len(rows) / ours_s:7.1f} items/s ({ours_s:.2f} s)  naive {len(rows) / naive_s:7.1f} "
            f"items/s ({naive_s:.2f} s)  lm-eval HFLM {len(rows) / hflm_s:7.1f} items/s ({hflm_s:.2f} s)  "
            f"speed-up {ratios[-1]:.2f}x (HFLM {naive_s / hflm_s:.2f}x)  same picks {agree:.1%}  "
            f"max |dll| {diff:.1e}"
        )
    print(
        f"speed-up vs naive: slowest round {min(ratios):.2f}x, best {max(ratios):.2f}x, spread "
        f"{max(ratios) - min(ratios):.2f}; goal >= 3x on the slowest round: {'met' if min(ratios) >= 3 else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
