"""The compress stage on a tiny trained Llama (head_dim 32): each method publishes a model that loads
and generates (quantized ones in vLLM's CPU build where it has the kernels, else in transformers with
the reason in the report), sizes and perplexities are reported, and bad input is refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support.tiny import assert_stops_at_turn_end

from lmforge.store import read_manifest
from lmforge.trainer.artifacts import fetch, split_uri
from lmforge.trainer.compress.report import nll_per_token
from lmforge.trainer.errors import InvalidInput
from lmforge.trainer.serve.launcher import vllm_env
from lmforge.trainer.shards import Shards
from trainer.compress.world import World

pytestmark = pytest.mark.ml

VLLM_SCRIPT = textwrap.dedent("""
    import sys
    def main():
        from vllm import LLM, SamplingParams
        llm = LLM(model=sys.argv[1], max_model_len=64, enforce_eager=True)
        out = llm.generate(["the red cat"], SamplingParams(max_tokens=4, temperature=0))
        print("GENERATED", len(out[0].outputs[0].token_ids))
    if __name__ == "__main__":
        main()
""")


def _report(arts: dict[str, str]) -> dict:
    return json.loads((fetch(arts["report"]) / "report.json").read_text())


def _generates_in_transformers(model_dir: Path) -> list[int]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ids = AutoTokenizer.from_pretrained(model_dir)("the red cat", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    return out[0, ids.shape[1] :].tolist()


def test_without_compression_the_model_is_republished_unchanged(world: World) -> None:
    arts, outcome = world.compress("plain", {})
    out = fetch(arts["model"])
    assert (out / "model.safetensors").read_bytes() == (world.teacher_dir / "model.safetensors").read_bytes()
    root, leaf = split_uri(arts["model"])
    from lmforge.store import open_store

    meta = read_manifest(open_store(root), leaf).metadata  # type: ignore[union-attr]
    assert meta["lineage"] == ["Dataset/tiny", world.teacher.artifacts["model"]]
    assert meta["dataset"]["shards"] == world.dataset.artifacts["shards"]
    assert _report(arts)["method"] == "none" and outcome.metrics["size_ratio"] == 1.0
    # the teacher's own generation config stops only at EOS: the published copy adds `<|end|>`,
    # the source directory is left as it was
    assert_stops_at_turn_end(out)
    assert json.loads((world.teacher_dir / "generation_config.json").read_text())["eos_token_id"] == 1


def test_int8_weight_only_shrinks_and_loads_in_transformers_with_the_reason(world: World) -> None:
    arts, outcome = world.compress("i8", {"quantization": {"method": "int8-weight"}})
    rep = _report(arts)
    assert rep["ratio"] <= 0.55 and rep["passed"] and 0 <= rep["perplexity_increase"] <= 0.05
    assert rep["vllm_cpu"] is False and "8-bit weight-only" in rep["vllm_cpu_reason"]
    model_dir = fetch(arts["model"])
    assert (
        json.loads((model_dir / "config.json").read_text())["quantization_config"]["quant_method"]
        == "compressed-tensors"
    )
    assert len(_generates_in_transformers(model_dir)) == 4
    assert set(outcome.metrics) == {"size_ratio", "perplexity_before", "perplexity_after", "perplexity_increase"}


def _held_out_scores(model_dir: Path, rows: np.ndarray, reference: Any | None = None) -> tuple[float, float, Any]:
    """(NLL per token, KL(reference ‖ model) per token, log-probs (N, L, V)) on `rows`."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.from_numpy(rows)).logits, -1)  # (N, L, V)
    kl = 0.0 if reference is None else float((reference.exp() * (reference - logp)).sum(-1).mean())
    return nll_per_token(model, rows), kl, logp


@pytest.mark.slow
def test_int4_gptq_and_awq_beat_round_to_nearest_on_held_out_rows_and_generate_in_vllm(
    world: World, tmp_path: Path
) -> None:
    # GPTQ/AWQ calibrate on the first 24 validation rows; all are scored on the 24 they never saw. This
    # teacher sits at its grammar's entropy floor, so INT4 costs little perplexity even with groups of 32
    # (measured: RTN +0.023%, GPTQ +0.004%, AWQ +0.007%); the KL to the unquantized model shows the gap
    # plainly (RTN 2.2e-5, GPTQ 1.0e-6, AWQ 1.7e-5 nats/token).
    calib = 24
    q = {"groupSize": 32, "calibrationSamples": calib, "maxPerplexityIncrease": 2}
    rtn, _ = world.compress("i4", {"quantization": {"method": "int4", **q}})
    gq, _ = world.compress("i4-gptq", {"quantization": {"method": "int4-gptq", **q}})
    aw, _ = world.compress("i4-awq", {"quantization": {"method": "int4-awq", **q}})
    held_out = Shards(world.shards_dir).validation.head()[calib:]
    assert len(held_out) >= 16
    full, _, ref = _held_out_scores(world.teacher_dir, held_out)
    nll, kl = {}, {}
    for name, arts in (("rtn", rtn), ("gptq", gq), ("awq", aw)):
        nll[name], kl[name], _ = _held_out_scores(fetch(arts["model"]), held_out, ref)
    # "Beat" is judged by the KL to the unquantized model. The perplexity gap between AWQ and RTN is within
    # float noise at this entropy floor: on another CPU AWQ came out +0.024% vs RTN +0.021% (KL still
    # 1.4e-5 vs 2.1e-5), so its perplexity is only bounded; GPTQ's is clearly below RTN's everywhere.
    # AWQ's KL against RTN's was 0.77, 0.67 and (an AVX2-only EPYC, whose fp32 kernels train a slightly
    # different teacher) 0.89 on three CPUs; GPTQ's stayed near 0.05.
    assert full < nll["gptq"] < nll["rtn"], (full, nll)
    assert nll["awq"] < full * 1.001, (full, nll)
    assert kl["gptq"] < 0.2 * kl["rtn"] and kl["awq"] < 0.95 * kl["rtn"], kl
    assert _report(aw)["method"] == "int4-awq"
    rep = _report(gq)
    assert rep["method"] == "int4-gptq" and rep["ratio"] < 0.4 and rep["vllm_cpu"] is True
    config = json.loads((fetch(gq["model"]) / "config.json").read_text())["quantization_config"]
    assert config["config_groups"]["group_0"]["weights"]["group_size"] == 32
    script = tmp_path / "gen.py"
    script.write_text(VLLM_SCRIPT)
    env = vllm_env({**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"})  # as the serve launcher starts vLLM (AMX)
    done = subprocess.run(
        [sys.executable, str(script), str(fetch(gq["model"]))], capture_output=True, text=True, timeout=400, env=env
    )
    if "GENERATED 4" not in done.stdout and "cpu_gemm_wna16" in done.stdout + done.stderr:
        # vLLM's CPU build for AVX2-only CPUs has no INT4 weight GEMM (seen on an AVX2 EPYC: "'_C' object
        # has no attribute 'cpu_gemm_wna16'"); the quality checks above still ran.
        pytest.skip("vLLM's CPU kernels here have no INT4 (W4A16) GEMM: cpu_gemm_wna16 is missing")
    assert "GENERATED 4" in done.stdout, done.stderr[-3000:]


def test_w8a8_loads_in_transformers(world: World) -> None:
    # vLLM serving of W8A8 is covered by tests/trainer/serve (the served release is W8A8).
    arts, _ = world.compress("w8a8", {"quantization": {"method": "w8a8"}})
    rep = _report(arts)
    assert rep["vllm_cpu"] is True and rep["ratio"] <= 0.55 and rep["passed"]
    assert len(_generates_in_transformers(fetch(arts["model"]))) == 4
    assert_stops_at_turn_end(fetch(arts["model"]))


@pytest.mark.parametrize("method, expected", [("magnitude", 0.6), ("2:4", 0.5)])
def test_pruning_reaches_the_target_sparsity_and_loads(world: World, method: str, expected: float) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    arts, _ = world.compress(
        f"prune-{method.replace(':', '-')}",
        {"pruning": {"method": method, "sparsity": 0.6}, "quantization": {"maxPerplexityIncrease": 5}},
    )
    rep = _report(arts)
    assert rep["details"]["sparsity"] == pytest.approx(expected, abs=0.01)
    model_dir = fetch(arts["model"])
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    w = model.model.layers[0].mlp.up_proj.weight
    if method == "2:4":  # at most 2 non-zeros in every 4 consecutive inputs
        assert int((w.reshape(w.shape[0], -1, 4) != 0).sum(-1).max()) <= 2
    assert len(_generates_in_transformers(model_dir)) == 4


def test_too_large_a_perplexity_increase_is_not_published(world: World) -> None:
    with pytest.raises(InvalidInput, match=r"raised held-out perplexity by .* not publishing"):
        world.compress(
            "too-sparse",
            {"pruning": {"method": "magnitude", "sparsity": 0.95}, "quantization": {"maxPerplexityIncrease": 0.01}},
        )
    assert not (world.root / "store/releases/too-sparse/compress/model").exists()


def test_group_size_larger_than_the_layers_is_refused(world: World) -> None:
    with pytest.raises(InvalidInput, match="groupSize 256 does not divide"):
        world.compress("bad-group", {"quantization": {"method": "int4", "groupSize": 256}})


def test_calibrated_int4_is_refused_on_a_model_too_small_for_its_group_size(world: World) -> None:
    with pytest.raises(InvalidInput, match="groupSize 256 does not divide"):
        world.compress("bad-group-gptq", {"quantization": {"method": "int4-gptq", "groupSize": 256}})
