"""AWQ-style activation-aware scaling (Lin et al., 2023, arXiv:2306.00978) before round-to-nearest INT4.

Input channels that carry large activations matter most, so their weights are scaled up before rounding
(losing relatively less) and the inverse scale is folded into whatever produces that input, which
leaves the float model's function unchanged:
  s = mean|x|^α per input channel (normalised so that max·min = 1)      (in,)
  W ← W·diag(s), and the producer's output ← output / s
with α chosen per layer group on a grid to minimise ‖X Wᵀ − (X/s) Q(W·diag(s))ᵀ‖² over the calibration
activations, Q being the same group-wise RTN the `int4` path applies afterwards (α = 0 is plain RTN, so
the search never does worse on the calibration rows).

Folds applied only where exact, in Llama-style decoder layers: input RMSNorm → q/k/v, post-attention
RMSNorm → gate/up, up → down (down's input is act(gate)·up), and v → o when there is no grouped-query
attention (v's output rows then map one-to-one onto o's input columns). Written here because AutoAWQ
and llm-compressor pin torch/transformers/compressed-tensors versions vLLM 0.32 cannot live beside.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from lmforge.trainer.compress.data import forward_with_input_hooks
from lmforge.trainer.errors import InvalidInput

if TYPE_CHECKING:
    import torch

ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3")
"""model_types whose RMSNorm multiplies by its weight (Gemma's adds 1 to it, so a fold is not a scale)."""
GRID = [i / 10 for i in range(11)]
"""Exponents α tried."""
MAX_TOKENS = 4096
"""Calibration tokens kept per group (a fixed random subset), bounding memory on large models."""


def _groups(layer: Any, gqa: bool) -> list[tuple[torch.nn.Module, list[torch.nn.Linear]]]:
    """(producer of the shared input, Linears reading it) pairs of one decoder layer."""
    attn, mlp = layer.self_attn, layer.mlp
    out = [
        (layer.input_layernorm, [attn.q_proj, attn.k_proj, attn.v_proj]),
        (layer.post_attention_layernorm, [mlp.gate_proj, mlp.up_proj]),
        (mlp.up_proj, [mlp.down_proj]),
    ]
    if not gqa and attn.v_proj.out_features == attn.o_proj.in_features:
        out.append((attn.v_proj, [attn.o_proj]))
    return out


def _rtn(w: torch.Tensor, args: Any) -> torch.Tensor:
    """Group-wise round-to-nearest of w (out, in), returned dequantized, as the `int4` path does."""
    import torch
    from compressed_tensors.quantization.utils import calculate_qparams, calculate_range

    g = w.reshape(w.shape[0], -1, int(args.group_size))  # (out, in / g, g)
    scale, _ = calculate_qparams(g.amin(-1), g.amax(-1), args)  # (out, in / g)
    lo, hi = (float(v) for v in calculate_range(args, "cpu"))
    return (torch.clamp(torch.round(g / scale[..., None]), lo, hi) * scale[..., None]).reshape(w.shape)


def _search(x: torch.Tensor, linears: list[torch.nn.Linear], args: Any) -> tuple[torch.Tensor, float]:
    """Best per-channel scales s (in,) for inputs x (tokens, in) and their α."""
    mean_abs = x.abs().mean(0).clamp_min(1e-8)  # (in,)
    weights = [m.weight.detach().float() for m in linears]  # each (out, in)
    refs = [x @ w.T for w in weights]  # (tokens, out)
    best: tuple[float, torch.Tensor, float] | None = None
    for alpha in GRID:
        s = mean_abs**alpha
        s = s / (s.max() * s.min()).sqrt()
        err = sum(float(((x / s) @ _rtn(w * s, args).T - r).pow(2).mean()) for w, r in zip(weights, refs, strict=True))
        if best is None or err < best[0]:
            best = (err, s, alpha)
    assert best is not None
    return best[1], best[2]


def apply_scales(model: torch.nn.Module, rows: np.ndarray, args: Any) -> dict[str, float]:
    """Scale `model`'s weights in place (its float function unchanged); returns the α chosen per group,
    keyed by the first Linear's name."""
    import torch

    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) not in ARCHITECTURES:
        raise InvalidInput(
            f"int4-awq supports model types {', '.join(ARCHITECTURES)} (it folds scales into "
            f"their RMSNorms), not {getattr(config, 'model_type', None)!r}; use 'int4-gptq'"
        )
    gqa = config.num_key_value_heads != config.num_attention_heads  # type: ignore[union-attr]
    layers = [m for m in model.modules() if hasattr(m, "self_attn") and hasattr(m, "mlp")]
    groups = [g for layer in layers for g in _groups(layer, gqa)]
    names = {m: n for n, m in model.named_modules()}
    inputs: dict[torch.nn.Module, list[torch.Tensor]] = {lin[0]: [] for _, lin in groups}

    def keep(mod: torch.nn.Module, args_in: tuple[torch.Tensor, ...]) -> None:
        inputs[mod].append(args_in[0].detach().reshape(-1, args_in[0].shape[-1]).float())  # (tokens, in)

    forward_with_input_hooks(model, [(m, keep) for m in inputs], rows)
    gen = torch.Generator().manual_seed(0)
    chosen: dict[str, float] = {}
    with torch.no_grad():
        for producer, linears in groups:
            x = torch.cat(inputs.pop(linears[0]))  # (tokens, in)
            if len(x) > MAX_TOKENS:
                x = x[torch.randperm(len(x), generator=gen)[:MAX_TOKENS]]
            s, chosen[names[linears[0]]] = _search(x, linears, args)
            for m in linears:
                m.weight.mul_(s.to(m.weight.dtype))  # columns × s
            if isinstance(producer, torch.nn.Linear):  # output rows ÷ s
                producer.weight.div_(s.to(producer.weight.dtype)[:, None])
                if producer.bias is not None:
                    producer.bias.div_(s.to(producer.bias.dtype))
            else:  # RMSNorm: y = weight · x / rms(x)
                norm_weight: torch.Tensor = producer.weight  # type: ignore[assignment]
                norm_weight.div_(s.to(norm_weight.dtype))
    return chosen
