"""The calibrated INT4 methods on their own. GPTQ on one Linear layer: its weights lie on the INT4 grid
compressed-tensors packs, and on inputs with correlated channels (as real activations are) its output
error is well below round-to-nearest's. AWQ on a tiny Llama: the folds leave the float model's function
unchanged, and channels with outlier activations get scaled."""

from __future__ import annotations

from typing import Any

import pytest

from lmforge.trainer.compress import awq, gptq

pytestmark = pytest.mark.ml


def _w4_args(group: int) -> Any:
    from compressed_tensors.quantization import preset_name_to_scheme

    args = preset_name_to_scheme("W4A16", ["Linear"]).weights
    assert args is not None
    args.group_size = group
    return args


def test_gptq_is_on_the_int4_grid_and_beats_round_to_nearest_on_the_layer_output() -> None:
    import torch
    from compressed_tensors.quantization.utils import calculate_qparams

    torch.manual_seed(0)
    n_in, n_out, group = 128, 96, 64
    args = _w4_args(group)
    layer = torch.nn.Linear(n_in, n_out, bias=False)
    mix = torch.randn(16, n_in) * 3  # low-rank correlation between channels, plus noise
    x = torch.randn(2048, 16) @ mix + 0.3 * torch.randn(2048, n_in)  # (tokens, in)
    layer.weight.data[:, :8] = 0  # a pruned stretch must stay pruned
    calib, held_out = x[:1024], x[1024:]
    h = 2 * calib.T @ calib / len(calib)  # what `hessians` accumulates, (in, in)
    q, scales = gptq.quantize_weight(layer.weight, h, args, torch.float32)
    assert scales.shape == (n_out, n_in // group)
    ints = q.reshape(n_out, -1, group) / scales[:, :, None]  # (out, groups, g)
    assert torch.allclose(ints, ints.round(), atol=1e-4)
    assert int(ints.round().min()) >= -8 and int(ints.round().max()) <= 7
    assert bool((q[:, :8] == 0).all())

    w = layer.weight.detach().reshape(n_out, -1, group)
    s, _ = calculate_qparams(w.amin(-1), w.amax(-1), args)  # (out, groups), as the int4 path does
    rtn = (torch.clamp(torch.round(w / s[:, :, None]), -8, 7) * s[:, :, None]).reshape(n_out, n_in)
    ref = held_out @ layer.weight.detach().T
    err_gptq = float(((held_out @ q.T - ref) ** 2).mean())
    err_rtn = float(((held_out @ rtn.T - ref) ** 2).mean())
    assert err_gptq < 0.7 * err_rtn, (err_gptq, err_rtn)


def test_hessians_are_the_input_second_moments_of_each_layer() -> None:
    import numpy as np
    import torch

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = torch.nn.Embedding(10, 8)
            self.proj = torch.nn.Linear(8, 4)

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            return self.proj(self.emb(input_ids))

    model = Tiny()
    rows = np.arange(30).reshape(10, 3) % 10
    h = gptq.hessians(model, [("proj", model.proj)], rows)["proj"]
    x = model.emb(torch.from_numpy(rows)).reshape(-1, 8).detach()
    assert torch.allclose(h, 2 * x.T @ x / 30, atol=1e-5)


def test_awq_folds_keep_the_float_model_and_scale_outlier_channels() -> None:
    import numpy as np
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=100,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=32,
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.model.layers[0].input_layernorm.weight[:4] *= 20  # outlier input channels of q/k/v
        for p in model.parameters():  # a non-trivial function (zero-initialised layers would hide folds)
            p.add_(0.01 * torch.randn_like(p))
    rows = np.random.default_rng(0).integers(0, 100, size=(8, 16))
    ids = torch.from_numpy(rows)
    with torch.no_grad():
        before = model(input_ids=ids).logits
    q_before = model.model.layers[0].self_attn.q_proj.weight.clone()
    alphas = awq.apply_scales(model, rows, _w4_args(32))
    with torch.no_grad():
        after = model(input_ids=ids).logits
    assert torch.allclose(before, after, atol=1e-4), float((before - after).abs().max())
    assert len(alphas) == 2 * 4  # qkv, gate/up, down, o per layer (no grouped-query attention)
    assert alphas["model.layers.0.self_attn.q_proj"] > 0
    ratio = model.model.layers[0].self_attn.q_proj.weight[:, :4].abs().mean() / q_before[:, :4].abs().mean()
    assert ratio > 1  # the outlier columns were scaled up before rounding


def test_awq_refuses_architectures_it_cannot_fold_into() -> None:
    import numpy as np
    from transformers import GPT2Config, GPT2LMHeadModel

    from lmforge.trainer.errors import InvalidInput

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=1, vocab_size=50))
    with pytest.raises(InvalidInput, match="int4-awq supports model types"):
        awq.apply_scales(model, np.zeros((1, 4), dtype=np.int64), _w4_args(32))
