"""trl's colocated vLLM rollouts on vLLM's CPU build: the process settings it needs, and a weight
sync that works there.

Why a sync of our own: trl 1.16 pushes the trained weights into a colocated engine parameter by
parameter with `model.load_weights`, which calls each parameter's `weight_loader`. vLLM's CPU build
(0.32) repacks every linear layer's weight for oneDNN after loading and leaves an empty `Parameter`
without a `weight_loader` in its place, so trl's first sync fails (`AttributeError: 'Parameter'
object has no attribute 'weight_loader'`). vLLM's own in-place reload (`reload_weights`, the path it
keeps for RL weight updates) restores the layers as they were before the repacking, loads the new
weights and repacks them. One thing it misses: a tied LM head (`tie_word_embeddings`, as LMForge's
tiny models have) gets no weight of its own, so its oneDNN copy keeps the old embedding; it is
repacked here from the updated, shared weight. Checked against transformers on the same weights
after a perturbation of every weight: greedy tokens and their log-probabilities
(`tests/trainer/align/test_vllm_cpu.py`).

The engine's precision: trl builds its colocated `LLM` without a dtype, so vLLM's `auto` applies,
and on an x86 CPU that downcasts a float32 checkpoint to bf16 (vLLM's CPU platform lists bf16 first).
An fp32 run would then sample from a rounded copy of its policy: on an AVX-512 machine the engine's
log-probabilities were up to 0.08 off transformers' on the same weights, where with float32 they
agree to 1e-5. So the engine gets the run's own precision (`engine_dtype`).

The settings: the KV cache is sized by `VLLM_CPU_KVCACHE_SPACE` on the CPU (not by trl's
`gpu_memory_utilization`), so a default is set when the environment has none; and the serve
launcher's CPU rules (AMX permission, no reserved core on small machines) apply in this process too,
because the engine runs inside it.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from lmforge.api.training import Precision

KVCACHE_GIB_DEFAULT = "1"
"""`VLLM_CPU_KVCACHE_SPACE` (GiB) when unset: room for ~16K tokens of a 1B model (fp32, 16 layers ×
8 KV heads × 64), far more than a tiny model's rollouts; set it in the environment for more."""


def prepare_process() -> None:
    """Environment for an engine inside this process, before vLLM is imported."""
    from lmforge.trainer.serve.cpu_site import sitecustomize as cpu_site

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", KVCACHE_GIB_DEFAULT)
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    cpu_site.request_amx()
    cpu_site.give_back_reserved_core()


@contextmanager
def engine_dtype(precision: Precision) -> Iterator[None]:
    """While trl builds its trainer (and so its colocated engine), its `LLM` is built in the run's
    `precision` (bf16 → bfloat16, else float32; fp16 does not run on the CPU): trl has no setting for it."""
    from trl.generation import vllm_generation

    dtype = "bfloat16" if precision is Precision.BF16 else "float32"

    module: Any = vllm_generation  # the name trl's colocated mode builds its engine from
    real = module.LLM
    module.LLM = functools.partial(real, dtype=dtype)
    try:
        yield
    finally:
        module.LLM = real


def refresh_embeddings(model: Any) -> int:
    """Repack every vocabulary embedding and LM head from its current weight (how many)."""
    from vllm.model_executor.layers.vocab_parallel_embedding import VocabParallelEmbedding

    count = 0
    for module in model.modules():
        if isinstance(module, VocabParallelEmbedding):
            module.quant_method.process_weights_after_loading(module)
            count += 1
    return count


def reload_into(llm: Any, named_weights: Any) -> None:
    """Load `(name, tensor)` pairs into a colocated engine through vLLM's in-place reload."""
    runner = llm.llm_engine.model_executor.driver_worker.model_runner
    runner.reload_weights(weights_iterator=named_weights, is_checkpoint_format=True)
    refresh_embeddings(runner.model)
    llm.reset_prefix_cache()


def use_reload_sync(generation: Any) -> None:
    """Make trl's `VLLMGeneration.sync_weights` go through `reload_into` (colocate mode)."""
    if generation.mode != "colocate":
        raise ValueError(f"the CPU weight sync is for colocated vLLM, not {generation.mode!r}")

    def sync_weights() -> None:
        # `_iter_named_params` is trl's: it merges LoRA adapters while it is read, and names the
        # weights as vLLM expects them.
        reload_into(generation.llm, generation._iter_named_params())

    generation.sync_weights = sync_weights
