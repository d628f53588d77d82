"""The shared-context scorer: one forward pass per context gives the naive loop's and lm-eval
`HFLM`'s log-likelihoods (and greedy flags), whatever the choice counts, lengths and batch cuts."""

from __future__ import annotations

import random
from typing import Any

import pytest

from lmforge.trainer.evaluate import shared_context

WORDS = ["cat", "dog", "bird", "fish", "tree", "river", "stone", "cloud", "apple", "lamp", "red", "old"]


@pytest.mark.parametrize(
    ("name", "lengths", "rows", "expected"),
    [
        ("one batch when everything fits, longest context first", [3, 1, 2], 8, [[2, 1, 3]]),
        ("cut where the next context's choices pass the budget", [2, 1, 1, 2], 4, [[2, 1, 1], [2]]),
        ("a context with more choices than the budget is alone", [1, 6, 1], 4, [[1], [6], [1]]),
    ],
)
def test_batches(name: str, lengths: list[int], rows: int, expected: list[list[int]]) -> None:
    # context i has length i + 1 and `lengths[i]` choices; sorting puts the longest context first
    contexts = [tuple(range(i + 1)) for i in range(len(lengths))]
    choices = {c: list(range(n)) for c, n in zip(contexts, lengths, strict=True)}
    got = shared_context.batches(contexts, choices, rows)
    assert [[len(choices[c]) for c in batch] for batch in got] == expected, name
    assert [len(c) for batch in got for c in batch] == sorted((len(c) for c in contexts), reverse=True)


def _naive(model: Any, ctx: list[int], cont: list[int]) -> tuple[float, bool]:
    import torch

    whole = ctx + cont
    with torch.inference_mode():
        logprobs = model(torch.tensor([whole])).logits.log_softmax(-1)[0]  # (T, V)
    steps = logprobs[len(ctx) - 1 : len(whole) - 1]
    target = torch.tensor(cont)
    return float(steps.gather(1, target[:, None]).sum()), bool((steps.argmax(-1) == target).all())


@pytest.mark.ml
@pytest.mark.parametrize("rows", [1, 3, 64])
def test_scores_equal_the_naive_loop_and_hflm(hf_backend: Any, rows: int) -> None:
    rng = random.Random(rows)
    pairs = []
    for _ in range(7):
        ctx = "Question: " + " ".join(rng.choices(WORDS, k=rng.randint(1, 12))) + "?\nAnswer:"
        pairs += [(ctx, " " + " ".join(rng.choices(WORDS, k=rng.randint(1, 6)))) for _ in range(rng.randint(1, 5))]
    encoded = [hf_backend.lm._encode_pair(c, x) for c, x in pairs]
    got = shared_context.loglikelihoods(hf_backend.model, encoded, rows, int(hf_backend.tokenizer.pad_token_id), "cpu")
    for (ll, greedy), (ctx, cont) in zip(got, encoded, strict=True):
        ref_ll, ref_greedy = _naive(hf_backend.model, ctx, cont)
        assert ll == pytest.approx(ref_ll, abs=1e-4) and greedy == ref_greedy
    # The backend (which routes through the scorer) against lm-eval's own batching, plus a pair with
    # an empty context, which goes through HFLM itself.
    pairs.append(("", " cat dog"))
    hflm = hf_backend.lm.loglikelihood(hf_backend._instances("loglikelihood", pairs), disable_tqdm=True)
    ours = hf_backend.loglikelihood(pairs)
    assert len(ours) == len(pairs)
    for (ll, greedy), (ref_ll, ref_greedy) in zip(ours, hflm, strict=True):
        assert ll == pytest.approx(float(ref_ll), abs=1e-4) and greedy == bool(ref_greedy)
