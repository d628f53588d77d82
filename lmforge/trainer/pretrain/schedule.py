"""Learning-rate schedule: linear warm-up from 0 to the peak, then decay to the floor.

Expressed as a multiplier of the peak LR for `torch.optim.lr_scheduler.LambdaLR`, whose state (the
step counter) DeepSpeed saves and restores with the checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from lmforge.api.training import LRSchedule, Optimizer


def lr_multiplier(opt: Optimizer, total_steps: int) -> Callable[[int], float]:
    """step (0-based optimizer steps taken) → LR / peak LR."""
    floor = opt.min_lr / opt.lr
    warmup = min(opt.warmup_steps, max(total_steps - 1, 0))
    decay_steps = max(total_steps - warmup, 1)

    def multiplier(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if opt.schedule is LRSchedule.CONSTANT:
            return 1.0
        progress = min((step - warmup) / decay_steps, 1.0)
        if opt.schedule is LRSchedule.LINEAR:
            return floor + (1.0 - floor) * (1.0 - progress)
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return multiplier
