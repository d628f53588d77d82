"""Scores on a tiny random model equal a hand-computed reference (a direct Hugging Face forward loop)."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lmforge.trainer.evaluate import generation, multiple_choice, perplexity
from lmforge.trainer.evaluate.tasks import ChoiceRow, GenerationRow, TextRow
from lmforge.trainer.shards import FORMAT, INDEX, ShardEntry, ShardIndex

pytestmark = pytest.mark.ml

WORDS = ["cat", "dog", "bird", "fish", "tree", "river", "stone", "cloud", "apple", "lamp", "red", "old"]


def _reference_loglik(model: Any, tok: Any, context: str, continuation: str) -> float:
    """log P(continuation | context): encode the whole, the context's tokens are its prefix."""
    import torch

    whole = tok.encode(context + continuation, add_special_tokens=False)
    n_ctx = len(tok.encode(context, add_special_tokens=False))
    with torch.no_grad():
        logprobs = model(torch.tensor([whole])).logits.log_softmax(-1)[0]  # (T, V)
    return sum(float(logprobs[i - 1, whole[i]]) for i in range(n_ctx, len(whole)))


def test_multiple_choice_accuracy_matches_a_reference_with_a_known_answer_pattern(hf_backend: Any) -> None:
    rng = random.Random(7)
    questions = []
    for i in range(16):
        choices = tuple(" ".join(rng.choices(WORDS, k=rng.randint(1, 4))) for _ in range(4))
        questions.append((f"which {WORDS[i % len(WORDS)]} {i}?", choices))
    model, tok = hf_backend.model, hf_backend.tokenizer
    rows, expect_norm = [], 0
    for i, (q, choices) in enumerate(questions):
        lls = [_reference_loglik(model, tok, f"Question: {q}\nAnswer:", " " + c) for c in choices]
        best = max(range(4), key=lambda j: lls[j])
        best_norm = max(range(4), key=lambda j: lls[j] / len(" " + choices[j]))
        answer = best if i % 4 else (best + 1) % 4  # the model is right on exactly 3 rows in 4
        expect_norm += best_norm == answer
        rows.append(ChoiceRow(q, choices, answer))
    done: list[int] = []
    metrics = multiple_choice.evaluate(hf_backend, rows, [], done.append)
    assert metrics["acc"].value() == 0.75
    assert metrics["acc_norm"].value() == expect_norm / len(rows)
    assert sum(done) == len(rows)


def test_text_perplexity_is_exp_of_mean_nll(hf_backend: Any) -> None:
    import torch

    texts = [
        "the red cat sees the old dog .",
        "the quiet bird keeps the green lamp . the fish moves .",
        "a stone river",
    ]
    model, tok = hf_backend.model, hf_backend.tokenizer
    nll, count = 0.0, 0
    for text in texts:
        ids = tok.encode(text, add_special_tokens=False)
        full = torch.tensor([[tok.bos_token_id, *ids]])
        with torch.no_grad():
            logprobs = model(full).logits.log_softmax(-1)[0]
        nll -= sum(float(logprobs[i, ids[i]]) for i in range(len(ids)))
        count += len(ids)
    metrics = perplexity.text_perplexity(hf_backend, [TextRow(t) for t in texts], lambda n: None, "t")
    assert metrics["nll"].value() == pytest.approx(nll / count, rel=1e-5)
    assert metrics["perplexity"].value() == pytest.approx(math.exp(nll / count), rel=1e-5)


def test_shard_perplexity_is_exp_of_mean_nll(hf_backend: Any, tmp_path: Path) -> None:

    import torch

    rng = np.random.default_rng(0)
    rows = rng.integers(0, len(hf_backend.tokenizer), size=(10, 16)).astype(np.uint16)
    rows[:6].tofile(tmp_path / "val-0.bin")
    rows[6:].tofile(tmp_path / "val-1.bin")
    (tmp_path / INDEX).write_bytes(
        ShardIndex(
            format=FORMAT,
            dtype="uint16",
            seq_length=16,
            vocab_size=512,
            eos_id=1,
            validation=[ShardEntry(file="val-0.bin", sequences=6), ShardEntry(file="val-1.bin", sequences=4)],
        ).to_bytes()
    )
    sequences = perplexity.validation_sequences(tmp_path, limit=9)
    assert sequences.shape == (9, 16)
    with torch.no_grad():
        ids = torch.tensor(rows[:9].astype(np.int64))
        logprobs = hf_backend.model(ids).logits.log_softmax(-1)  # (9, 16, V)
    nll = -float(logprobs[:, :-1].gather(-1, ids[:, 1:, None]).sum())
    metrics = perplexity.token_perplexity(hf_backend.token_nll, sequences, lambda n: None, "t")
    assert metrics["perplexity"].value() == pytest.approx(math.exp(nll / (9 * 15)), rel=1e-5)


def test_generation_exact_match_against_the_models_own_greedy_answers(hf_backend: Any) -> None:
    import torch

    model, tok = hf_backend.model, hf_backend.tokenizer
    prompts = [f"the {w} sees the" for w in WORDS[:6]]
    rows = []
    for i, p in enumerate(prompts):
        ids = torch.tensor([tok.encode(p, add_special_tokens=False)])
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
        greedy = tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True).split("\n")[0]
        rows.append(GenerationRow(p, (greedy if i % 2 == 0 else "zzz qqq",)))
    metrics = generation.evaluate(hf_backend, rows, [], max_new_tokens=4, seed=0, advance=lambda n: None)
    assert metrics["exact_match"].value() == 0.5
    assert metrics["f1"].value() >= 0.5
