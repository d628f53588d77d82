"""`lmforge plan`: parameters, FLOPs, Chinchilla tokens, memory per ZeRO stage and time."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmforge.api.pretrain import Architecture
from lmforge.api.training import Precision
from lmforge.cli import main
from lmforge.plan import make_plan, parse_count


@pytest.mark.parametrize(("text", "value"), [("300M", 300_000_000), ("1.5B", 1_500_000_000), ("2e9", 2 * 10**9),
                                             ("1T", 10**12), ("4096", 4096)])
def test_parse_count(text: str, value: int) -> None:
    assert parse_count(text) == value


def test_gpt2_small_sized_llama_matches_known_figures() -> None:
    arch = Architecture(num_layers=12, hidden_size=768, num_heads=12, intermediate_size=3072, tie_embeddings=True)
    plan = make_plan(arch, vocab=50257, seq=1024, tokens=10**9, gpus=8, gpu="h100", mfu=0.4, micro_batch=8,
                     precision=Precision.BF16, checkpointing=False)
    # 12 × (4·768² attention + 3·768·3072 SwiGLU + norms) + 50257·768 tied embedding ≈ 152M
    assert 150e6 < plan.parameters < 155e6
    assert plan.chinchilla_tokens == 20 * plan.parameters
    assert plan.total_flops == pytest.approx(plan.flops_per_token * 10**9)
    assert plan.flops_per_token > 6 * plan.parameters  # plus attention scores
    mem = list(plan.memory_gib_per_gpu.values())
    assert mem == sorted(mem, reverse=True) and mem[0] > 1.5 * mem[3]
    assert plan.hours == pytest.approx(plan.total_flops / (8 * 989e12 * 0.4) / 3600)


def test_cli_prints_a_plan_from_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--layers", "2", "--hidden", "64", "--heads", "2", "--vocab", "300", "--seq", "32",
                 "--tokens", "1M", "--gpus", "1", "--gpu", "a100", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["tokens"] == 1_000_000 and out["gpus"] == 1 and set(out["memory_gib_per_gpu"]) == {
        "zero0", "zero1", "zero2", "zero3"}


def test_cli_reads_a_pretrain_job_and_its_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job = (Path(__file__).resolve().parents[1] / "examples/tiny/02-pretrain.yaml").read_text()
    dataset = (Path(__file__).resolve().parents[1] / "examples/tiny/01-dataset.yaml").read_text()
    path = tmp_path / "both.yaml"
    path.write_text(dataset + "\n---\n" + job)
    assert main(["plan", "-f", str(path), "--gpus", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    arch = Architecture(num_layers=4, hidden_size=128, num_heads=4, num_kv_heads=2, head_dim=32,
                        tie_embeddings=True)
    assert out["parameters"] == arch.parameter_count(1024)  # the Dataset's vocabSize
    assert out["tokens"] > 0
    assert main(["plan", "--layers", "2", "--hidden", "64", "--heads", "2"]) == 0
    assert "chinchilla-optimal" in capsys.readouterr().out
