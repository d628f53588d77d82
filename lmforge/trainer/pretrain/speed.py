"""Step-speed choices the stage makes on its own: attention kernel and optimizer implementation.

Measured on the benchmark model (5.3M-parameter Llama, seq 256, micro-batch 8, bf16, 2 CPU threads,
DeepSpeed ZeRO-1): the plain-matmul ("eager") attention beats PyTorch's CPU flash-attention kernel
(SDPA) — 9.8k vs 8.6k tokens/s — because at short sequences the flash kernel's blocking costs more
than the S×S scores it avoids; the fused AdamW kernel beats the default multi-tensor one — with
`torch.compile`, 15.9k vs 11.6k tokens/s — because the optimizer's elementwise passes over the fp32
master weights are memory-bound. Neither changes the arithmetic beyond rounding.
"""

from __future__ import annotations

from typing import Any

EAGER_ATTENTION_MAX_SEQ = 512
"""Longest sequence for which CPU training uses eager attention (its scores, B·H·S² values per
layer, stay small next to the activations; beyond it the flash kernel's memory saving matters)."""


def cpu_attention(seq_length: int) -> str:
    """The attention implementation to train with on the CPU at this sequence length."""
    return "eager" if seq_length <= EAGER_ATTENTION_MAX_SEQ else "sdpa"


def choose_attention(model: Any, seq_length: int, uses_gpu: bool) -> str:
    """Switch a transformers model to the faster attention for CPU training; returns the one in use.
    On GPUs the model's default (SDPA, flash/memory-efficient kernels) is kept. The choice is not
    saved with the model (`config.json` carries no attention implementation)."""
    if not uses_gpu:
        model.set_attn_implementation(cpu_attention(seq_length))
    return str(model.config._attn_implementation)


def adamw(groups: list[dict[str, Any]], lr: float, betas: tuple[float, float], eps: float) -> Any:
    """`torch.optim.AdamW` with the fused kernel (CPU and CUDA); DeepSpeed hands it the fp32 master
    weights, so the kernel always sees fp32 tensors on one device."""
    import torch

    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=True)
