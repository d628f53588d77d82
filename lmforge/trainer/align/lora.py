"""LoRA / QLoRA with peft: target checks, the adapter config, the 4-bit base, merging.

peft only fails when *no* target matches; a misspelt name among correct ones would silently train
fewer modules than asked, so every name is checked against the model's module names first. QLoRA
needs bitsandbytes and a CUDA GPU; without them the run fails here instead of quietly training a
full-precision LoRA.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lmforge.api.alignment import AdapterType, AlignmentJobSpec
from lmforge.trainer.errors import InvalidInput


def uses_adapter(spec: AlignmentJobSpec) -> bool:
    return spec.adapter.type is not AdapterType.NONE


def check_targets(model: Any, targets: list[str]) -> None:
    """Every target name must be the last component(s) of some module's name (peft's rule)."""
    names = [n for n, _ in model.named_modules() if n]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        leaves = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if n and not list(m.children())})
        raise InvalidInput(
            f"spec.adapter.targetModules: {', '.join(missing)} match no module of the base model "
            f"(its leaf modules: {', '.join(leaves)})"
        )


def lora_config(spec: AlignmentJobSpec, task_type: str) -> Any:
    """peft's LoraConfig for the spec (`task_type` CAUSAL_LM or SEQ_CLS)."""
    from peft import LoraConfig

    a = spec.adapter
    # A reward head is new: it must train fully and be saved with the adapter.
    to_save = ["score"] if task_type == "SEQ_CLS" else None
    return LoraConfig(
        r=a.r,
        lora_alpha=a.alpha,
        lora_dropout=a.dropout,
        target_modules=list(a.target_modules),
        task_type=task_type,
        bias="none",
        modules_to_save=to_save,
    )


def require_qlora_runtime() -> None:
    """Fail clearly when QLoRA cannot run here."""
    import importlib.util

    import torch

    if not torch.cuda.is_available():
        raise InvalidInput(
            "spec.adapter.type: qlora needs a CUDA GPU (4-bit bitsandbytes) and none is visible; "
            "use type lora on the CPU"
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise InvalidInput("spec.adapter.type: qlora needs the bitsandbytes package, which is not installed")


def quantization_config(spec: AlignmentJobSpec) -> Any:
    """BitsAndBytes 4-bit NF4 for QLoRA, else None."""
    if spec.adapter.type is not AdapterType.QLORA:
        return None
    require_qlora_runtime()
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )


def wrap(model: Any, spec: AlignmentJobSpec, task_type: str = "CAUSAL_LM") -> Any:
    """The model with LoRA adapters attached (targets checked), or unchanged without an adapter."""
    if not uses_adapter(spec):
        return model
    from peft import get_peft_model, prepare_model_for_kbit_training

    check_targets(model, list(spec.adapter.target_modules))
    if spec.adapter.type is AdapterType.QLORA:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=spec.training.gradient_checkpointing)
    return get_peft_model(model, lora_config(spec, task_type))


def reattach(base: Callable[[], Any], adapter_dir: Path) -> Any:
    """A saved adapter on a fresh copy of its base (`base()` loads it at the stored precision), so that
    merging adds the LoRA update to the original weights rather than to their bf16 rounding (a bf16
    weight has 8 significant bits: a small update would partly round away). The caller has already
    dropped the trained model; it sits in reference cycles with the trainer, hence the collection
    before the base is loaded again."""
    from peft import PeftModel

    gc.collect()
    release_freed_memory()
    return PeftModel.from_pretrained(base(), adapter_dir)


def release_freed_memory() -> None:
    """Hand memory the allocator keeps after the training objects are freed back to the OS (glibc
    keeps freed heap pages mapped; `malloc_trim` returns them), so the next model's pages do not add
    to a peak made of garbage. A no-op where the C library has no `malloc_trim`."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    trim = getattr(libc, "malloc_trim", None)
    if trim is not None:
        trim(0)
