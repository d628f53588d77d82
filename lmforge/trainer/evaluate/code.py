"""Code tasks (HumanEval-style): sample completions of each function head, run each with the row's
tests in the sandbox, and report pass@k with the unbiased estimator of Chen et al. (2021).

`sandboxed` (1 or 0) records whether the programs ran isolated, so a suite run with `isolation: none`
says so in its results, status metrics and report (and a threshold `code.sandboxed == 1` can gate it)."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from lmforge.api.evalsuite import CodeIsolation
from lmforge.trainer.evaluate import sandbox
from lmforge.trainer.evaluate.backend import Backend, GenerationRequest
from lmforge.trainer.evaluate.sandbox import Limits, Outcome, run_program
from lmforge.trainer.evaluate.stats import ItemScores
from lmforge.trainer.evaluate.tasks import CodeRow, row_ids

STOP = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#")
"""A completion ends where the function body does (HumanEval's stop sequences)."""
CHUNK = 8
"""Problems per generation batch (and progress report)."""
SAMPLE_TEMPERATURE = 0.8
"""With more than one sample per problem; one sample is greedy."""


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn from n (c of them correct) passes."""
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def program(row: CodeRow, completion: str) -> str:
    """The file executed: the head, the model's body, the tests, and the call that runs them."""
    return f"{row.prompt}{completion}\n\n{row.test}\n\ncheck({row.entry_point})\n"


def execute(sources: Sequence[str], limits: Limits, isolation: CodeIsolation = CodeIsolation.SANDBOX) -> list[Outcome]:
    """Run programs concurrently, one sandbox each (the work is in child processes)."""
    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        return list(pool.map(lambda s: run_program(s, limits, isolation), sources))


def evaluate(
    backend: Backend,
    rows: Sequence[CodeRow],
    samples: int,
    max_new_tokens: int,
    timeout_seconds: float,
    seed: int,
    advance: Callable[[int], None],
    isolation: CodeIsolation = CodeIsolation.SANDBOX,
) -> dict[str, ItemScores]:
    """`pass@1`, `pass@<samples>`, `pass@k` (= pass@samples), averaged over problems, and `sandboxed`.

    Raises `SandboxUnavailable` (before generating anything) when the sandbox cannot be established.
    """
    if isolation is CodeIsolation.SANDBOX:
        sandbox.probe()
    temperature = SAMPLE_TEMPERATURE if samples > 1 else 0.0
    limits = Limits(wall_seconds=timeout_seconds, cpu_seconds=max(1, math.ceil(timeout_seconds)))
    correct: list[int] = []
    for start in range(0, len(rows), CHUNK):
        chunk = rows[start : start + CHUNK]
        requests = [
            GenerationRequest(r.prompt, max_new_tokens, STOP, temperature) for r in chunk for _ in range(samples)
        ]
        completions = backend.generate(requests, seed + start)
        rows_of = [r for r in chunk for _ in range(samples)]
        outcomes = execute([program(r, c) for r, c in zip(rows_of, completions, strict=True)], limits, isolation)
        for i in range(len(chunk)):
            correct.append(sum(o.passed for o in outcomes[i * samples : (i + 1) * samples]))
        advance(len(chunk))
    ids = row_ids(rows)
    # pass@1 of one sample and pass@n of n samples are 0/1 per problem; pass@1 of n > 1 is a fraction
    metrics = {"pass@1": ItemScores([pass_at_k(samples, c, 1) for c in correct], binary=samples == 1, ids=ids)}
    metrics[f"pass@{samples}"] = ItemScores([pass_at_k(samples, c, samples) for c in correct], binary=True, ids=ids)
    metrics["pass@k"] = metrics[f"pass@{samples}"]
    # A flag, not a measurement: the same value for every problem (its interval is a point).
    metrics["sandboxed"] = ItemScores([1.0 if isolation is CodeIsolation.SANDBOX else 0.0] * len(rows), ids=ids)
    return metrics
