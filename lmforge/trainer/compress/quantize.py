"""Post-training quantization into the compressed-tensors checkpoint format that vLLM loads.

compressed-tensors (the format library vLLM itself reads these checkpoints with, pinned by vLLM at
0.17.0) attaches a scheme to each Linear, holds the scales, packs the weights and writes the
`quantization_config` into config.json. What is ours: choosing the scheme, computing round-to-nearest
scales from each weight's own min/max (weights-only schemes need no activation statistics, and W8A8
quantizes activations dynamically per token), GPTQ's error-compensated INT4 weights (`gptq.py`) and
AWQ's activation-aware scaling before rounding (`awq.py`), both from calibration activations, and
knowing which schemes vLLM's CPU build can run. llm-compressor is not used: every release of it pins a
compressed-tensors other than vLLM 0.32's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lmforge.api.release import QuantMethod
from lmforge.trainer.compress import awq, gptq
from lmforge.trainer.compress.data import default_device
from lmforge.trainer.errors import InvalidInput

if TYPE_CHECKING:
    import torch

SKIP = ["lm_head"]
"""Layers left in full precision (the output projection, tied to the embedding in small models)."""


@dataclass(frozen=True)
class Scheme:
    preset: str
    """compressed-tensors preset name."""
    grouped: bool
    """Whether `groupSize` applies (else one scale per output channel)."""
    vllm_cpu_reason: str | None
    """None when vLLM's CPU backend serves the scheme; otherwise why not."""


SCHEMES: dict[QuantMethod, Scheme] = {
    QuantMethod.INT8_WEIGHT: Scheme(
        "W8A16",
        grouped=False,
        vllm_cpu_reason="vLLM 0.32's CPU WNA16 kernels take only 4-bit weights (uint4/uint4b8), not "
        "8-bit weight-only; serve it on a GPU, or use w8a8 or int4 on the CPU",
    ),
    QuantMethod.W8A8: Scheme("W8A8", grouped=False, vllm_cpu_reason=None),
    QuantMethod.INT4: Scheme("W4A16", grouped=True, vllm_cpu_reason=None),
    QuantMethod.INT4_GPTQ: Scheme("W4A16", grouped=True, vllm_cpu_reason=None),
    QuantMethod.INT4_AWQ: Scheme("W4A16", grouped=True, vllm_cpu_reason=None),
}


def scheme_for(method: QuantMethod) -> Scheme:
    return SCHEMES[method]


def _targets(model: torch.nn.Module) -> list[tuple[str, torch.nn.Linear]]:
    import torch

    return [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n.split(".")[-1] not in SKIP]


def check_group_size(model: torch.nn.Module, group_size: int) -> None:
    """Every quantized layer's input width must split into whole groups."""
    bad = [f"{n} (in_features {m.in_features})" for n, m in _targets(model) if m.in_features % group_size]
    if bad:
        raise InvalidInput(
            f"compression.quantization.groupSize {group_size} does not divide the input width of "
            f"{len(bad)} layer(s), e.g. {bad[0]}: the model is too small for this group size; use a "
            "divisor of its hidden and intermediate sizes"
        )


def quantize(
    model: torch.nn.Module,
    method: QuantMethod,
    group_size: int,
    calibration: np.ndarray,
) -> object:
    """Quantize `model` in place; returns the `ModelCompressor` that writes its config on save.

    Round-to-nearest: each weight row (or group of `group_size` weights) gets the symmetric scale
    max|w| / (2^bits / 2 - 0.5) of its own values, (out, 1) or (out, in / group_size). GPTQ instead
    rounds column by column, compensating the error with the input statistics of the `calibration`
    rows (N, L) of token ids; AWQ rescales input channels by those statistics, then rounds to nearest.
    """
    import torch
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import (
        QuantizationConfig,
        QuantizationStatus,
        QuantizationStrategy,
        apply_quantization_config,
        preset_name_to_scheme,
    )
    from compressed_tensors.quantization.utils import calculate_qparams

    spec = scheme_for(method)
    scheme = preset_name_to_scheme(spec.preset, ["Linear"])
    assert scheme.weights is not None
    if spec.grouped:
        check_group_size(model, group_size)
        scheme.weights.group_size = group_size
    else:
        scheme.weights.strategy = QuantizationStrategy.CHANNEL
        scheme.weights.group_size = None
    # Calibration passes run on the GPU when there is one; the compressed model is saved from the CPU.
    model.to(default_device())
    # Activation statistics from the unquantized model, before the quantization wrappers are attached.
    if method == QuantMethod.INT4_AWQ:
        awq.apply_scales(model, calibration, scheme.weights)  # then the round-to-nearest below
    hs = gptq.hessians(model, _targets(model), calibration) if method == QuantMethod.INT4_GPTQ else {}
    config = QuantizationConfig(
        config_groups={"group_0": scheme}, ignore=SKIP, quantization_status=QuantizationStatus.INITIALIZED
    )
    apply_quantization_config(model, config)
    with torch.no_grad():
        for name, layer in _targets(model):
            module: Any = layer
            args = module.quantization_scheme.weights
            if name in hs:  # GPTQ: the weight becomes its own dequantized grid values
                w_q, scale = gptq.quantize_weight(module.weight, hs.pop(name), args, module.weight_scale.dtype)
                module.weight.copy_(w_q.to(module.weight.dtype))
                module.weight_scale.copy_(scale.to(module.weight_scale.dtype))
                if hasattr(module, "weight_zero_point"):
                    module.weight_zero_point.zero_()  # symmetric
                module.quantization_status = QuantizationStatus.FROZEN
                continue
            w = module.weight.float()  # (out, in)
            if args.strategy == QuantizationStrategy.GROUP:
                w = w.reshape(w.shape[0], -1, args.group_size)  # (out, in / g, g)
                lo, hi = w.amin(-1), w.amax(-1)  # (out, in / g)
            else:
                lo, hi = w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)  # (out, 1)
            scale, zero = calculate_qparams(lo, hi, args)
            module.weight_scale.copy_(scale.to(module.weight_scale.dtype))
            if hasattr(module, "weight_zero_point"):
                module.weight_zero_point.copy_(zero.to(module.weight_zero_point.dtype))
            module.quantization_status = QuantizationStatus.FROZEN
    model.to("cpu")
    compressor = ModelCompressor.from_pretrained_model(model)
    compressor.compress_model(model)
    return compressor


def save(model: Any, compressor: Any, out_dir: Path) -> None:
    """Write the (compressed) weights and config.json with its `quantization_config`."""
    model.save_pretrained(out_dir, safe_serialization=True)
    if compressor is not None:
        compressor.update_config(str(out_dir))
