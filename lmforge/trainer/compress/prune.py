"""Weight pruning of a model's Linear layers (attention and MLP projections; embeddings and the
output head are kept), with torch.nn.utils.prune doing the masking.

The pruned weights are written densely (zeros in place): vLLM 0.32 loads them as an ordinary model,
and compressed-tensors 0.17 no longer writes sparse formats, so the gain shows in quality-vs-size
only once a sparse kernel or a later quantization uses it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lmforge.api.release import PruneMethod
from lmforge.trainer.compress.quantize import SKIP

if TYPE_CHECKING:
    import torch


def _linears(model: torch.nn.Module) -> list[torch.nn.Linear]:
    import torch

    return [m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n.split(".")[-1] not in SKIP]


def magnitude(model: torch.nn.Module, sparsity: float) -> None:
    """Zero the `sparsity` fraction of smallest-|w| weights, ranked globally across the layers."""
    from torch.nn.utils import prune

    params = [(m, "weight") for m in _linears(model)]
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=sparsity)
    for module, name in params:
        prune.remove(module, name)  # bake the mask into the weight


def semi_structured_2_4(model: torch.nn.Module) -> None:
    """In every run of 4 consecutive input weights of a row keep the 2 largest |w| (50% sparsity,
    the pattern sparse tensor cores accelerate)."""
    import torch

    with torch.no_grad():
        for m in _linears(model):
            w = m.weight  # (out, in)
            if w.shape[1] % 4:
                continue
            groups = w.reshape(w.shape[0], -1, 4)  # (out, in / 4, 4)
            drop = groups.abs().argsort(dim=-1)[..., :2]  # two smallest of each 4
            mask = torch.ones_like(groups, dtype=torch.bool).scatter_(-1, drop, False)
            w.copy_((groups * mask).reshape_as(w))


def prune_model(model: torch.nn.Module, method: PruneMethod, sparsity: float) -> float:
    """Prune in place; returns the achieved sparsity over the pruned layers."""
    if method == PruneMethod.MAGNITUDE:
        magnitude(model, sparsity)
    elif method == PruneMethod.SEMI_STRUCTURED_2_4:
        semi_structured_2_4(model)
    return sparsity_of(model)


def sparsity_of(model: torch.nn.Module) -> float:
    """Fraction of exactly-zero weights over the prunable layers."""
    zeros = total = 0
    for m in _linears(model):
        zeros += int((m.weight == 0).sum())
        total += m.weight.numel()
    return zeros / max(total, 1)
