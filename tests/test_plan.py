"""`lmforge plan`: parameters, FLOPs, Chinchilla tokens, memory per ZeRO stage and time."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmforge.api.pretrain import Architecture
from lmforge.api.training import Precision, train_state_bytes
from lmforge.cli import main
from lmforge.plan import Plan, make_plan, parse_count


@pytest.mark.parametrize(
    ("text", "value"),
    [("300M", 300_000_000), ("1.5B", 1_500_000_000), ("2e9", 2 * 10**9), ("1T", 10**12), ("4096", 4096)],
)
def test_parse_count(text: str, value: int) -> None:
    assert parse_count(text) == value


def _plan(arch: Architecture, *, vocab: int, seq: int, tokens: int, gpus: int = 8) -> Plan:
    return make_plan(
        arch,
        vocab=vocab,
        seq=seq,
        tokens=tokens,
        gpus=gpus,
        gpu="h100",
        mfu=0.4,
        micro_batch=8,
        precision=Precision.BF16,
        checkpointing=False,
    )


def test_llama3_8b_parameter_count_is_the_published_one() -> None:
    # meta-llama/Meta-Llama-3-8B config.json: 32 layers, hidden 4096, 32 heads, 8 KV heads,
    # intermediate 14336, vocab 128256, untied embeddings; its safetensors hold 8,030,261,248 parameters.
    arch = Architecture(num_layers=32, hidden_size=4096, num_heads=32, num_kv_heads=8, intermediate_size=14336)
    assert _plan(arch, vocab=128256, seq=8192, tokens=15 * 10**12).parameters == 8_030_261_248


def test_gpt2_small_shapes_give_its_124m_less_what_llama_leaves_out() -> None:
    # GPT-2 small (Radford et al. 2019; HF `gpt2`): 124,439,808 parameters with 12 layers, width 768,
    # a 3072-wide GELU MLP, tied 50257-token embeddings. A Llama with a 2048-wide SwiGLU has the same
    # 3 × 768 × 2048 = 2 × 768 × 3072 MLP weights; it has no learned position table (1024 × 768),
    # no linear biases (12 × (2304 + 768 + 3072 + 768)) and RMSNorm without LayerNorm's bias (25 × 768).
    arch = Architecture(num_layers=12, hidden_size=768, num_heads=12, intermediate_size=2048, tie_embeddings=True)
    gpt2_small = 124_439_808
    without = 1024 * 768 + 12 * (2304 + 768 + 3072 + 768) + 25 * 768
    assert _plan(arch, vocab=50257, seq=1024, tokens=10**9).parameters == gpt2_small - without


def test_training_flops_match_gpt3s_published_compute() -> None:
    # Brown et al. 2020, Table D.1: GPT-3 175B (96 layers, width 12288, 96 heads × 128, context 2048)
    # trained on 300B tokens took 3.14e23 FLOPs, counted as 6·N·D; the planner adds attention scores
    # (≈3% at this width), so it lands within 5% above 6·N·D and the published figure.
    arch = Architecture(num_layers=96, hidden_size=12288, num_heads=96, intermediate_size=32768, tie_embeddings=True)
    plan = _plan(arch, vocab=50257, seq=2048, tokens=300 * 10**9)
    assert plan.parameters == pytest.approx(174.6e9, rel=0.01)
    six_nd = 6 * plan.parameters * plan.tokens
    assert 1.0 < plan.total_flops / six_nd < 1.05
    assert plan.total_flops == pytest.approx(3.14e23, rel=0.05)
    assert plan.chinchilla_tokens == pytest.approx(20 * 174.6e9, rel=0.01)  # Hoffmann et al. 2022


def test_zero_memory_matches_the_zero_papers_figure() -> None:
    # Rajbhandari et al. 2020, Figure 1: a 7.5B model on 64 GPUs with mixed-precision Adam (K = 12)
    # needs 120 GB per GPU without ZeRO, 31.4 GB with Pos, 16.6 GB with Pos+g, 1.88 GB with Pos+g+p.
    published = [120.0, 31.4, 16.6, 1.88]
    got = [train_state_bytes(7_500_000_000, zero_stage=z, world=64, precision=Precision.BF16) / 1e9 for z in range(4)]
    assert got == pytest.approx(published, rel=0.01)


def test_the_cluster_example_is_planned_for_its_32_gpus(capsys: pytest.CaptureFixture[str]) -> None:
    # examples/cluster/pipeline.yaml: 4 nodes × 8 GPUs, a `tokens` budget (not maxSteps), ZeRO-3.
    path = Path(__file__).resolve().parents[1] / "examples/cluster/pipeline.yaml"
    assert main(["plan", "-f", str(path)]) == 0
    assert "time on 32× h100" in capsys.readouterr().out
    assert main(["plan", "-f", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["gpus"] == 32 and out["tokens"] == 20_000_000_000
    # Activations are the same under every stage, so zero0 − zero3 is the state ZeRO-3 partitions away.
    n, mem = out["parameters"], out["memory_gib_per_gpu"]
    saved = 16 * n * (1 - 1 / 32)  # 16 bytes/param (2 + 2 + 12) spread over 32 GPUs
    assert (mem["zero0"] - mem["zero3"]) * 2**30 == pytest.approx(saved, rel=0.01)


def test_cli_prints_a_plan_from_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(
            [
                "plan",
                "--layers",
                "2",
                "--hidden",
                "64",
                "--heads",
                "2",
                "--vocab",
                "300",
                "--seq",
                "32",
                "--tokens",
                "1M",
                "--gpus",
                "1",
                "--gpu",
                "a100",
                "--json",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert (
        out["tokens"] == 1_000_000
        and out["gpus"] == 1
        and set(out["memory_gib_per_gpu"]) == {"zero0", "zero1", "zero2", "zero3"}
    )


def test_cli_reads_a_pretrain_job_and_its_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job = (Path(__file__).resolve().parents[1] / "examples/tiny/02-pretrain.yaml").read_text()
    dataset = (Path(__file__).resolve().parents[1] / "examples/tiny/01-dataset.yaml").read_text()
    path = tmp_path / "both.yaml"
    path.write_text(dataset + "\n---\n" + job)
    assert main(["plan", "-f", str(path), "--gpus", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    arch = Architecture(num_layers=4, hidden_size=128, num_heads=4, num_kv_heads=2, head_dim=32, tie_embeddings=True)
    assert out["parameters"] == arch.parameter_count(1024)  # the Dataset's vocabSize
    assert out["tokens"] > 0
    assert main(["plan", "--layers", "2", "--hidden", "64", "--heads", "2"]) == 0
    assert "chinchilla-optimal" in capsys.readouterr().out
