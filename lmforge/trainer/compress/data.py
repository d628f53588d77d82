"""Calibration passes over a Dataset's token rows (read with `lmforge.trainer.shards.Shards`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

CALIB_BATCH = 8
"""Calibration rows per forward pass."""


def forward_with_input_hooks(
    model: torch.nn.Module,
    hooks: list[tuple[torch.nn.Module, Callable[[torch.nn.Module, tuple[torch.Tensor, ...]], None]]],
    rows: np.ndarray,
) -> None:
    """Run the calibration rows (N, L) of token ids through `model` with a forward pre-hook on each
    module, so GPTQ and AWQ see every quantized layer's inputs; the hooks are always removed."""
    import torch

    handles = [module.register_forward_pre_hook(fn) for module, fn in hooks]
    try:
        model.eval()
        with torch.no_grad():
            for start in range(0, len(rows), CALIB_BATCH):
                model(input_ids=torch.from_numpy(rows[start:start + CALIB_BATCH]))
    finally:
        for handle in handles:
            handle.remove()
