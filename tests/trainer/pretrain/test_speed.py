"""The stage's speed choices keep the arithmetic: eager attention gives SDPA's logits, the fused AdamW
makes the default AdamW's update."""

from __future__ import annotations

import pytest

from lmforge.trainer.pretrain.speed import EAGER_ATTENTION_MAX_SEQ, adamw, choose_attention, cpu_attention

pytestmark = pytest.mark.ml


def test_cpu_attention_by_sequence_length() -> None:
    assert cpu_attention(256) == "eager"
    assert cpu_attention(EAGER_ATTENTION_MAX_SEQ) == "eager"
    assert cpu_attention(EAGER_ATTENTION_MAX_SEQ + 1) == "sdpa"


def test_eager_attention_matches_sdpa_and_gpu_keeps_default() -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        head_dim=32,
        max_position_embeddings=64,
        use_cache=False,
    )
    model = LlamaForCausalLM(config).eval()
    x = torch.randint(0, 128, (2, 48))
    assert choose_attention(model, 48, uses_gpu=True) == "sdpa"
    with torch.no_grad():
        sdpa = model(input_ids=x).logits
    assert choose_attention(model, 48, uses_gpu=False) == "eager"
    with torch.no_grad():
        eager = model(input_ids=x).logits
    torch.testing.assert_close(eager, sdpa, rtol=1e-4, atol=1e-4)


def test_fused_adamw_makes_the_default_update() -> None:
    import torch

    torch.manual_seed(0)
    a = torch.nn.Linear(16, 8)
    b = torch.nn.Linear(16, 8)
    b.load_state_dict(a.state_dict())
    fused = adamw([{"params": a.parameters(), "weight_decay": 0.1}], 1e-2, (0.9, 0.95), 1e-8)
    plain = torch.optim.AdamW([{"params": b.parameters(), "weight_decay": 0.1}], lr=1e-2, betas=(0.9, 0.95), eps=1e-8)
    before = a.weight.detach().clone()
    x = torch.randn(4, 16)
    for model, opt in ((a, fused), (b, plain)):
        for _ in range(3):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
    assert not torch.equal(a.weight, before)
    torch.testing.assert_close(a.weight, b.weight)
    torch.testing.assert_close(a.bias, b.bias)
