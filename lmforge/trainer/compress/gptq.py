"""GPTQ (Frantar et al., 2022, arXiv:2210.17323): INT4 weights whose rounding error is compensated,
column by column, on the columns not yet quantized, weighted by the layer's input statistics.

Written here because GPTQModel, auto-gptq and llm-compressor all pin torch/transformers/compressed-tensors
versions other than the ones vLLM 0.32 needs. The result is an ordinary group-wise symmetric W4A16 weight
(integers times one scale per group), so it is packed by compressed-tensors exactly as the
round-to-nearest `int4` path is and served by the same vLLM kernels.

Per Linear layer with weight W (out, in) and calibration inputs X (tokens, in):
  H = 2/n · XᵀX + λ·mean(diag H)·I                      (in, in), λ = `DAMP`
  U = chol(H⁻¹)ᵀ (upper)                                  the rows of the inverse needed in column order
  for each column j: q_j = Q(w_j); e = (w_j - q_j) / U_jj; W[:, j+1:] -= e ⊗ U_j,j+1:
processed in blocks of columns with the updates to later blocks applied once per block ("lazy batch").
Group scales are taken from the already error-updated weights at the start of each group. No act-order
(it would need a `g_idx` permutation the CPU kernels do not take). Hessians are collected in one pass of
the unquantized model (not layer-sequentially), which keeps this compact at a small loss of accuracy.
Weights already zero (a pruned model) are kept zero, so pruning + GPTQ keeps its sparsity.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from lmforge.trainer.compress.data import forward_with_input_hooks
from lmforge.trainer.errors import StageError

if TYPE_CHECKING:
    import torch

DAMP = 0.01
"""Dampening added to H's diagonal, as a fraction of its mean (the paper's default)."""
BLOCK = 128
"""Columns per lazy-batch block (rounded to a multiple of the group size)."""


def hessians(
    model: torch.nn.Module,
    layers: list[tuple[str, torch.nn.Linear]],
    rows: np.ndarray,
) -> dict[str, torch.Tensor]:
    """2/n · XᵀX of each layer's inputs over the calibration rows (N, L) of token ids, (in, in) float32."""
    import torch

    acc: dict[str, torch.Tensor] = {
        n: torch.zeros(m.in_features, m.in_features, device=m.weight.device) for n, m in layers
    }
    count: dict[str, int] = dict.fromkeys(acc, 0)

    def hook(name: str) -> Any:
        def add(_: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).float()  # (tokens, in)
            acc[name].addmm_(x.T, x)
            count[name] += x.shape[0]

        return add

    forward_with_input_hooks(model, [(m, hook(n)) for n, m in layers], rows)
    return {n: acc[n] * (2.0 / max(count[n], 1)) for n in acc}


def _inverse_factor(h: torch.Tensor) -> torch.Tensor:
    """Upper Cholesky factor of the damped H⁻¹; the dampening grows until H is positive definite."""
    import torch

    eye = torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    mean_diag = float(h.diagonal().mean())
    for damp in (DAMP, 0.1, 1.0):
        chol, info = torch.linalg.cholesky_ex(h + damp * mean_diag * eye)
        if int(info) == 0:
            return torch.linalg.cholesky(torch.cholesky_inverse(chol), upper=True)
    raise StageError("GPTQ: the calibration Hessian is not positive definite even with heavy dampening")


def quantize_weight(
    weight: torch.Tensor,
    h: torch.Tensor,
    args: Any,
    scale_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GPTQ one weight (out, in) with its Hessian (in, in) under compressed-tensors group `args`.

    Returns (dequantized weight (out, in) on the INT4 grid, scales (out, in / group_size)); the scales are
    rounded to `scale_dtype` before use, so the compressor's packing recovers exactly these integers.
    """
    import torch
    from compressed_tensors.quantization.utils import calculate_qparams, calculate_range

    w = weight.detach().float().clone()  # (out, in)
    pruned = w == 0  # zeros from pruning stay zero (their error is compensated like any other)
    h = h.clone()
    n, g = w.shape[1], int(args.group_size)
    dead = h.diagonal() == 0  # inputs never active in calibration: any value is as good, use 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    u = _inverse_factor(h)  # (in, in) upper triangular
    q_min, q_max = (float(v) for v in calculate_range(args, "cpu"))
    out = torch.zeros_like(w)
    scales: list[torch.Tensor] = []
    block = max(g, BLOCK // g * g)  # a multiple of g, so groups never straddle blocks
    scale = torch.empty(0)
    for b0 in range(0, n, block):
        b1 = min(b0 + block, n)
        w1, u1 = w[:, b0:b1].clone(), u[b0:b1, b0:b1]  # (out, B), (B, B)
        err = torch.zeros_like(w1)
        for i in range(b1 - b0):
            if i % g == 0:
                grp = w1[:, i : i + g]  # (out, g), already carrying the error of earlier columns
                s, _ = calculate_qparams(grp.amin(-1, keepdim=True), grp.amax(-1, keepdim=True), args)
                scale = s.to(scale_dtype).float().clamp_min(torch.finfo(scale_dtype).tiny)  # (out, 1)
                scales.append(scale)
            col = w1[:, i]  # (out,)
            q = torch.clamp(torch.round(col / scale[:, 0]), q_min, q_max) * scale[:, 0]
            q = q.masked_fill(pruned[:, b0 + i], 0.0)
            out[:, b0 + i] = q
            e = (col - q) / u1[i, i]
            w1[:, i:] -= e[:, None] * u1[i, i:][None, :]
            err[:, i] = e
        w[:, b1:] -= err @ u[b0:b1, b1:]  # the block's error, spread over the later columns at once
    return out, torch.cat(scales, dim=1)
