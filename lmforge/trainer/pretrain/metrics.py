"""Throughput and model FLOPs utilisation (MFU).

MFU = achieved model FLOP/s ÷ peak FLOP/s of the devices. Achieved FLOPs use the standard estimate
(`Architecture.flops_per_token`: 6·N plus attention), so recomputation from activation checkpointing
does not count as useful work. The peak comes from the spec, else a table of GPUs, else — on the CPU,
where no data sheet applies — a short measured matmul in the training precision.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from lmforge.api.training import Precision, peak_flops_for


def measured_matmul_flops(precision: Precision, size: int = 1024, seconds: float = 0.3) -> float:
    """FLOP/s of square matmuls on this process's threads (the practical ceiling on a CPU)."""
    import torch

    dtype = torch.float32 if precision is Precision.FP32 else torch.bfloat16
    a = torch.randn(size, size, dtype=dtype)
    b = torch.randn(size, size, dtype=dtype)
    torch.mm(a, b)  # warm-up
    n = 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds or n < 2:
        torch.mm(a, b)
        n += 1
    return 2.0 * size**3 * n / elapsed


def device_peak_flops(precision: Precision, configured: float | None) -> tuple[float, str]:
    """(peak FLOP/s of one device, where the figure came from)."""
    if configured is not None:
        return configured, "spec"
    import torch

    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        peak = peak_flops_for(name)
        if peak is not None:
            return (peak / 2 if precision is Precision.FP32 else peak), f"table:{name}"
    measured = measured_matmul_flops(precision)
    if precision is not Precision.FP32:
        # A CPU without native bf16 (AVX2-only, e.g. some EPYCs: ~1 GFLOP/s in bf16 against ~100 in
        # fp32 here) runs bf16 training partly through fp32 kernels, faster than its own bf16 matmul:
        # the ceiling is the faster of the two, so MFU stays a share of what the machine can do.
        measured = max(measured, measured_matmul_flops(Precision.FP32))
    return measured, "measured-matmul"


@dataclass
class Throughput:
    """Tokens/s and MFU over a sliding window of optimizer steps (the first step, which includes
    warm-up and any compilation, is left out of the window as soon as there is a second)."""

    tokens_per_step: int
    flops_per_token: float
    peak_flops_total: float
    window: int = 20
    _marks: list[tuple[float, int]] = field(default_factory=list)

    def step(self, step: int) -> None:
        self._marks.append((time.perf_counter(), step))
        if len(self._marks) > self.window + 1:
            self._marks.pop(0)

    def start(self, step: int) -> None:
        self._marks = [(time.perf_counter(), step)]

    def tokens_per_second(self) -> float:
        if len(self._marks) < 2:
            return 0.0
        (t0, s0), (t1, s1) = self._marks[0], self._marks[-1]
        return (s1 - s0) * self.tokens_per_step / max(t1 - t0, 1e-9)

    def mfu(self) -> float:
        return self.tokens_per_second() * self.flops_per_token / self.peak_flops_total
