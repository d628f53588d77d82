"""Calibration passes over a Dataset's token rows (read with `lmforge.trainer.shards.Shards`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

CALIB_BATCH = 8
"""Calibration rows per forward pass."""


def default_device() -> str:
    """Where the compression passes run: the GPU when torch sees one, else the CPU."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def device_of(model: torch.nn.Module) -> torch.device:
    """The device of `model`'s first parameter (where its inputs must go)."""
    return next(model.parameters()).device


def forward_with_input_hooks(
    model: torch.nn.Module,
    hooks: list[tuple[torch.nn.Module, Callable[[torch.nn.Module, tuple[torch.Tensor, ...]], None]]],
    rows: np.ndarray,
) -> None:
    """Run the calibration rows (N, L) of token ids through `model` with a forward pre-hook on each
    module, so GPTQ and AWQ see every quantized layer's inputs; the hooks are always removed."""
    import torch

    handles = [module.register_forward_pre_hook(fn) for module, fn in hooks]
    device = device_of(model)
    try:
        model.eval()
        with torch.no_grad():
            for start in range(0, len(rows), CALIB_BATCH):
                model(input_ids=torch.from_numpy(rows[start : start + CALIB_BATCH]).to(device))
    finally:
        for handle in handles:
            handle.remove()
