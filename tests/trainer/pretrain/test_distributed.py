"""The stage as users run it: `python -m lmforge.trainer pretrain --spec FILE`, as one process against
S3, and as two torchrun processes under each ZeRO stage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.seaweed import SeaweedServer

from lmforge.api.contract import RESULT_KEY, RecordType
from lmforge.store import open_store, read_manifest

from .conftest import World, pretrain_resource, publish_dataset, records_of, run_subprocess, stage_spec

pytestmark = pytest.mark.ml


def _s3_world(
    s3_server: SeaweedServer, tmp_path: Path, tiny_tokenizer: Path, monkeypatch: pytest.MonkeyPatch, prefix: str
) -> World:
    """An empty store under `prefix` in the test's SeaweedFS, with the tiny dataset published in it."""
    s3_server.apply_env(monkeypatch)
    monkeypatch.setenv("LMFORGE_CACHE", str(tmp_path / "cache"))
    uri = f"s3://{s3_server.bucket}/{prefix}"
    store = open_store(uri)
    store.delete_prefix("")
    return World(store, uri, publish_dataset(store, "tiny-corpus", tmp_path, tiny_tokenizer), tmp_path)


def test_end_to_end_subprocess_with_checkpoints_in_s3(
    s3_server: SeaweedServer, tmp_path: Path, tiny_tokenizer: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = _s3_world(s3_server, tmp_path, tiny_tokenizer, monkeypatch, "e2e-pretrain")
    store, uri = w.store, w.store_uri
    spec = stage_spec(w, pretrain_resource(training={"maxSteps": 8}, checkpoint={"everySteps": 4}))
    proc = run_subprocess(spec, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "DeepSpeed config: {" in proc.stdout
    records = records_of(proc.stdout)
    result = [r for r in records if r.type is RecordType.RESULT]
    assert len(result) == 1 and result[0].artifacts["model"] == f"{uri}/runs/pretrain/model"
    assert result[0].metrics["loss"] < next(r for r in records if r.metrics).metrics["loss"]
    out = store.child("runs/pretrain")
    assert json.loads(out.get_bytes(RESULT_KEY))["type"] == "result"
    assert json.loads(out.get_bytes("checkpoints/latest"))["tag"] == "step-8"
    for step in (4, 8):
        assert read_manifest(out, f"checkpoints/step-{step}") is not None
    model = read_manifest(out, "model")
    assert model is not None and "model.safetensors" in model.files
    assert model.metadata["dataset"]["shards"] == f"{uri}/datasets/tiny-corpus/shards"


@pytest.mark.slow
@pytest.mark.parametrize("zero", [1, 2, 3])
def test_two_processes_train_under_each_zero_stage(zero: int, world: World) -> None:
    resource = pretrain_resource(
        training={"maxSteps": 6, "microBatchSize": 4},
        deepspeed={"zeroStage": zero},
        checkpoint={"everySteps": 3},
        validation={"everySteps": 3, "batches": 2},
        compute={"threads": 1},
    )
    proc = run_subprocess(stage_spec(world, resource), world.tmp, nproc=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = records_of(proc.stdout)
    assert [r.type for r in records].count(RecordType.RESULT) == 1  # rank 0 alone reports the result
    losses = {r.step: r.metrics["loss"] for r in records if "loss" in r.metrics}
    assert losses[6] < losses[1]
    out = world.store.child("runs/pretrain")
    ckpt = read_manifest(out, "checkpoints/step-6")
    assert ckpt is not None
    shards = [f for f in ckpt.files if "optim_states" in f]
    assert len(shards) == 2  # one optimizer partition per rank
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(world.tmp / "store" / "runs/pretrain/model")
    assert model.model.embed_tokens.weight.shape == (model.config.vocab_size, 64)  # gathered, not a shard
    assert float(model.model.norm.weight.float().std()) > 0  # RMSNorm weights start at 1 and moved


@pytest.mark.slow
def test_two_processes_resume_weights_only_from_s3(
    s3_server: SeaweedServer, tmp_path: Path, tiny_tokenizer: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two ranks' ZeRO-1 checkpoint, streamed to S3 (each rank's optimizer partition), resumes under
    weights-only loading, as a retried multi-node Job does."""
    w = _s3_world(s3_server, tmp_path, tiny_tokenizer, monkeypatch, "two-rank-resume")

    def resource(steps: int) -> dict[str, object]:
        return pretrain_resource(
            training={"maxSteps": steps, "microBatchSize": 4},
            deepspeed={"zeroStage": 1},
            checkpoint={"everySteps": 2},
            validation={"everySteps": 50, "batches": 1},
            compute={"threads": 1},
        )

    first = run_subprocess(stage_spec(w, resource(2)), tmp_path, nproc=2)
    assert first.returncode == 0, first.stderr[-3000:]
    again = run_subprocess(stage_spec(w, resource(4)), tmp_path, nproc=2)
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = [r.message for r in records_of(again.stdout) if "resumed from checkpoint" in (r.message or "")]
    assert resumed and "step-2" in resumed[0], resumed
