"""Build a Hugging Face `LlamaForCausalLM` from `lmforge.api.pretrain.Architecture`.

Training a stock transformers model (instead of our own module) means the exported directory is a
plain Hugging Face model that transformers, vLLM and peft load without any code of ours; the only
thing owned here is the mapping from the spec's field names to `LlamaConfig`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lmforge.api.pretrain import Architecture

if TYPE_CHECKING:
    from transformers import LlamaConfig, LlamaForCausalLM


def llama_config(
    arch: Architecture,
    *,
    vocab_size: int,
    context_length: int,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
) -> LlamaConfig:
    """The `LlamaConfig` of `arch` for a tokenizer of `vocab_size` tokens and rows of `context_length`."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=arch.hidden_size,
        intermediate_size=arch.resolved_intermediate_size,
        num_hidden_layers=arch.num_layers,
        num_attention_heads=arch.num_heads,
        num_key_value_heads=arch.num_kv_heads or arch.num_heads,
        head_dim=arch.resolved_head_dim,
        max_position_embeddings=arch.max_position_embeddings or context_length,
        rope_parameters={"rope_type": "default", "rope_theta": arch.rope_theta},
        rms_norm_eps=arch.rms_norm_eps,
        tie_word_embeddings=arch.tie_embeddings,
        hidden_act="silu",  # SwiGLU: silu(gate) * up
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        use_cache=False,  # training; the exported config turns it back on
    )


def build_model(config: LlamaConfig, seed: int) -> LlamaForCausalLM:
    """A freshly initialised model in fp32 (DeepSpeed casts to the training precision)."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def load_model(path: str, **kwargs: Any) -> LlamaForCausalLM:
    """A saved Hugging Face causal LM (continual pretraining, distillation), in fp32 for training."""
    import torch
    from transformers import AutoModelForCausalLM

    model: Any = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **kwargs)
    model.config.use_cache = False
    loaded: LlamaForCausalLM = model
    return loaded


def architecture_of(config: Any) -> Architecture:
    """The spec-side description of a loaded model's config (for the model card and metadata)."""
    return Architecture(
        num_layers=config.num_hidden_layers,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_heads=config.num_attention_heads,
        num_kv_heads=config.num_key_value_heads,
        head_dim=getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads,
        max_position_embeddings=config.max_position_embeddings,
        rope_theta=float((getattr(config, "rope_parameters", None) or {}).get("rope_theta", 10000.0)),
        rms_norm_eps=config.rms_norm_eps,
        tie_embeddings=bool(config.tie_word_embeddings),
    )


def parameter_count(model: Any) -> int:
    """Distinct trainable parameters (tied weights counted once)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += int(getattr(p, "ds_numel", p.numel()))
    return total
