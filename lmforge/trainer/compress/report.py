"""Before/after figures of a compression run: bytes on disk and held-out perplexity, and the
tolerance check that refuses to publish a model that got too much worse."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lmforge.store import MANIFEST_NAME
from lmforge.trainer.errors import InvalidInput

if TYPE_CHECKING:
    import torch

EVAL_BATCH = 16
"""Rows per forward pass when scoring."""


def dir_size(path: Path) -> int:
    """Bytes of every file under `path` except our manifest (what a server has to load)."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and p.name != MANIFEST_NAME)


def nll_per_token(model: torch.nn.Module, rows: np.ndarray) -> float:
    """Mean next-token negative log-likelihood (nats) over packed rows (N, L) of token ids."""
    import torch
    import torch.nn.functional as F

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(rows), EVAL_BATCH):
            ids = torch.from_numpy(rows[start : start + EVAL_BATCH]).to(next(model.parameters()).device)  # (B, L)
            logits = model(input_ids=ids).logits.float()  # (B, L, V)
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1), reduction="sum")
            total += float(loss)
            count += ids[:, 1:].numel()
    if count == 0:
        raise InvalidInput("no held-out tokens to score perplexity on")
    return total / count


def perplexity(model_dir: Path, rows: np.ndarray) -> float:
    """Held-out perplexity of a saved model as transformers loads it (compressed-tensors checkpoints
    are decompressed on load, so this also proves the published directory loads)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return math.exp(nll_per_token(model, rows))


@dataclass
class CompressionReport:
    """`report.json`: what was done and what it cost."""

    method: str
    """Steps applied, e.g. `distil+2:4+w8a8`, or `none`."""
    size_before_bytes: int
    size_after_bytes: int
    perplexity_before: float | None
    """Of the model entering pruning/quantization (the student when distilled)."""
    perplexity_after: float | None
    max_perplexity_increase: float
    perplexity_teacher: float | None = None
    """Of the input model, when a student was distilled from it."""
    vllm_cpu: bool = True
    """Whether vLLM's CPU backend can serve the published scheme."""
    vllm_cpu_reason: str | None = None
    """Why not, when it cannot (the model was verified in transformers instead)."""
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.size_after_bytes / max(self.size_before_bytes, 1)

    @property
    def perplexity_increase(self) -> float:
        if self.perplexity_before is None or self.perplexity_after is None:
            return 0.0
        return self.perplexity_after / self.perplexity_before - 1.0

    @property
    def passed(self) -> bool:
        return self.perplexity_increase <= self.max_perplexity_increase

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(ratio=self.ratio, perplexity_increase=self.perplexity_increase, passed=self.passed)
        return out

    def metrics(self) -> dict[str, float]:
        out = {"size_ratio": self.ratio, "perplexity_increase": self.perplexity_increase}
        if self.perplexity_before is not None and self.perplexity_after is not None:
            out.update(perplexity_before=self.perplexity_before, perplexity_after=self.perplexity_after)
        return out

    def check(self) -> None:
        """Refuse (not retryable: the same input fails the same way) when the model got too worse."""
        if not self.passed:
            raise InvalidInput(
                f"compression {self.method} raised held-out perplexity by {self.perplexity_increase:.1%} "
                f"({self.perplexity_before:.3f} -> {self.perplexity_after:.3f}), more than "
                f"compression.quantization.maxPerplexityIncrease={self.max_perplexity_increase:.1%}; "
                "not publishing"
            )
