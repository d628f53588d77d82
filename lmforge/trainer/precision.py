"""The precision a training stage really runs in: the spec's, except bf16 on a CPU that has no native
bf16, which trains in fp32 instead (and says so).

Why: without AVX512-BF16 or AMX (an AVX2-only AMD EPYC here) oneDNN emulates bf16, and a bf16 matmul
ran at 0.86 GFLOP/s against 98 GFLOP/s in fp32 on the same two cores; the tiny example's pretraining
took minutes per dozen steps instead of seconds. fp32 is at least as accurate as bf16 (bf16 is the
memory- and speed-saving choice), so falling back loses nothing a user asked bf16 for on such a CPU,
the way vLLM casts a bf16 model to a dtype the CPU runs. The fallback is announced on stderr and in
the stage's progress record, and the result's `precision` names what ran.
`LMFORGE_CPU_BF16=emulated` keeps bf16 anyway (to measure the emulation itself).
"""

from __future__ import annotations

import functools
import os

from lmforge.api.alignment import AlignmentJob
from lmforge.api.kinds import Resource
from lmforge.api.pretrain import PretrainJob
from lmforge.api.training import Precision

KEEP_ENV = "LMFORGE_CPU_BF16"
"""Set to `emulated` to train in bf16 even on a CPU without native bf16."""


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bf16 natively here (AVX512-BF16 or AMX), as torch reports it."""
    import torch

    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def trains_on_gpu(gpus_per_node: int) -> bool:
    """Whether a run asking for `gpus_per_node` GPUs trains on them (torch sees one)."""
    import torch

    return gpus_per_node > 0 and torch.cuda.is_available()


def effective_precision(resource: Resource) -> tuple[Resource, str | None]:
    """`resource` with the precision it will train in, and a note when that differs from its spec."""
    if not isinstance(resource, PretrainJob | AlignmentJob):
        return resource, None
    training = resource.spec.training
    if training.precision is not Precision.BF16 or os.environ.get(KEEP_ENV) == "emulated":
        return resource, None
    if trains_on_gpu(resource.spec.topology.gpus_per_node) or cpu_has_native_bf16():
        return resource, None
    note = (
        "spec.training.precision: bf16 requested, training in fp32: this CPU has no native bf16 "
        f"(AVX512-BF16/AMX), where emulated bf16 is ~100x slower than fp32 (set {KEEP_ENV}=emulated to keep it)"
    )
    spec = resource.spec.model_copy(update={"training": training.model_copy(update={"precision": Precision.FP32})})
    return resource.model_copy(update={"spec": spec}), note
