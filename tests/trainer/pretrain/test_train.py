"""Training a tiny Llama in-process: it learns, exports a loadable model, checkpoints atomically,
resumes exactly, and fails clearly on NaN losses and mismatched inputs."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.tiny import assert_stops_at_turn_end
from support.waiting import eventually

from lmforge.api.contract import InputArtifacts
from lmforge.store import read_manifest
from lmforge.trainer.errors import InvalidInput, StageError
from lmforge.trainer.pretrain import checkpoint as ckpt_mod
from lmforge.trainer.pretrain import loop as loop_mod

from .conftest import Run, World, module_world, pretrain_resource, publish_dataset, run_in_process, stage_spec

pytestmark = pytest.mark.ml

STEPS = 30  # checkpoints at 10, 20, 30; keepLast 2


class Crash(BaseException):
    """Stands in for SIGKILL: not an Exception, so nothing in the stage catches it."""


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: Path) -> Iterator[tuple[World, Run]]:
    """One uninterrupted 30-step run that several tests inspect."""
    with module_world(tmp_path_factory.mktemp("reference"), tiny_tokenizer) as w:
        yield w, run_in_process(stage_spec(w, pretrain_resource()))


def test_loss_decreases_and_progress_reports_the_metrics(reference: tuple[World, Run]) -> None:
    _, run = reference
    losses = run.outcome.losses
    assert sorted(losses) == list(range(1, STEPS + 1))
    assert losses[1] > 0.9 * math.log(300)
    assert sum(losses[s] for s in range(26, 31)) / 5 < 0.6 * losses[1]
    last = [r for r in run.records if r.step == STEPS and r.metrics][-1]
    for key in ("loss", "lr", "grad_norm", "tokens_per_second", "mfu", "val_loss", "val_perplexity"):
        assert key in last.metrics, key
    assert last.total == STEPS and last.metrics["tokens_per_second"] > 0 and 0 < last.metrics["mfu"] < 1
    assert last.metrics["val_perplexity"] < 30  # vocabulary is 300: it learned the grammar


def test_export_loads_back_in_transformers_and_generates(reference: tuple[World, Run]) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    w, run = reference
    manifest = read_manifest(w.store, "runs/pretrain/model")
    assert manifest is not None
    meta = manifest.metadata
    assert meta["dataset"]["shards"] == w.dataset.artifacts["shards"]
    assert meta["dataset"]["tokenizer"] == w.dataset.artifacts["tokenizer"]
    assert meta["lineage"] == ["Dataset/tiny-corpus"] and meta["architecture"]["numLayers"] == 2
    assert meta["metrics"]["val_loss"] == pytest.approx(run.outcome.metrics["val_loss"])
    path = Path(run.artifacts["model"].removeprefix("file://"))
    card = (path / "README.md").read_text()
    assert "tiny-corpus" in card and meta["dataset"]["cardSha256"] in card and "val_perplexity" in card
    assert "DeepSpeed" not in card and json.loads((path / "lmforge_training.json").read_text())["deepspeed"]
    tok = AutoTokenizer.from_pretrained(path)
    assert tok.chat_template
    assert_stops_at_turn_end(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    ids = tok("the red cat", return_tensors="pt")["input_ids"]
    out = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > ids.shape[1]
    assert tok.decode(out[0][ids.shape[1] :]).strip()


def test_keeps_the_last_k_checkpoints_and_latest_names_the_newest(reference: tuple[World, Run]) -> None:
    w, _ = reference
    steps = sorted({k.split("/")[3] for k in w.store.list("runs/pretrain/checkpoints") if "/step-" in k})
    assert steps == ["step-20", "step-30"]
    assert json.loads(w.store.get_bytes("runs/pretrain/checkpoints/latest"))["step"] == 30
    assert read_manifest(w.store, "runs/pretrain/checkpoints/step-30") is not None


def _fault(mp: pytest.MonkeyPatch, at_call: int, make: Any) -> None:
    """From the `at_call`-th micro-batch on, `make(loss)` replaces the real loss."""
    real = loop_mod.micro_loss
    calls = [0]

    def patched(engine: Any, x: Any, y: Any) -> Any:
        import torch

        loss = real(engine, x, y)
        if torch.is_grad_enabled():  # a training micro-batch, not validation
            calls[0] += 1
            if calls[0] >= at_call:
                return make(loss)
        return loss

    mp.setattr(loop_mod, "micro_loss", patched)


def _crash(_loss: Any) -> Any:
    raise Crash


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_kill_and_resume_continues_with_the_same_data_and_losses(
    world: World, reference: tuple[World, Run], monkeypatch: pytest.MonkeyPatch, asynchronous: bool
) -> None:
    spec = stage_spec(world, pretrain_resource(checkpoint={"async": asynchronous}))
    with pytest.MonkeyPatch.context() as mp:
        _fault(mp, 22, _crash)
        with pytest.raises(Crash):
            run_in_process(spec)
    # In-process, the "crash" does not stop a background save of step 20: it lands (a SIGKILL during
    # one is tested in test_checkpoint_async.py), and the resume below must continue from it exactly.
    eventually(lambda: json.loads(world.store.get_bytes("runs/pretrain/checkpoints/latest"))["step"] == 20 or None)
    resumed = run_in_process(spec)
    assert resumed.outcome.resumed_from == 20
    assert sorted(resumed.outcome.losses) == list(range(21, STEPS + 1))
    expected = reference[1].outcome.losses
    for step, loss in resumed.outcome.losses.items():
        assert loss == pytest.approx(expected[step], rel=2e-3), step
    assert any("resumed from checkpoint step-20" in (r.message or "") for r in resumed.records)


def test_latest_never_points_at_a_checkpoint_cut_off_mid_upload(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    # The synchronous save's crash; a SIGKILL during a background upload is in test_checkpoint_async.py.
    spec = stage_spec(world, pretrain_resource(training={"maxSteps": 10}, checkpoint={"everySteps": 5, "async": False}))
    real = ckpt_mod.ArtifactWriter.add_file
    uploads = [0]

    def dying_add_file(self: Any, rel: str, path: Path) -> Any:
        if "step-10" in self.uri:
            uploads[0] += 1
            if uploads[0] == 2:  # one file of step-10 is up, the process dies during the next
                raise Crash
        return real(self, rel, path)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ckpt_mod.ArtifactWriter, "add_file", dying_add_file)
        with pytest.raises(Crash):
            run_in_process(spec)
    latest = json.loads(world.store.get_bytes("runs/pretrain/checkpoints/latest"))
    assert latest["tag"] == "step-5"
    assert world.store.list("runs/pretrain/checkpoints/step-10")  # partial files exist ...
    assert read_manifest(world.store, "runs/pretrain/checkpoints/step-10") is None  # ... but uncommitted
    again = run_in_process(spec)
    assert again.outcome.resumed_from == 5 and "model" in again.artifacts
    assert json.loads(world.store.get_bytes("runs/pretrain/checkpoints/latest"))["tag"] == "step-10"


def test_store_outage_while_checkpointing_retries_and_keeps_the_old_latest(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lmforge.store import StoreError

    monkeypatch.setattr(ckpt_mod, "UPLOAD_BACKOFF_S", 0.01)
    spec = stage_spec(world, pretrain_resource(training={"maxSteps": 10}, checkpoint={"everySteps": 5}))
    real = ckpt_mod.ArtifactWriter.add_file
    attempts: list[Any] = []  # one ArtifactWriter per upload attempt (its files may upload in parallel)

    def unreachable(self: Any, rel: str, path: Path) -> Any:
        if "step-10" in self.uri:
            if not any(w is self for w in attempts):
                attempts.append(self)
            raise StoreError("s3://bucket: could not connect to the endpoint")
        return real(self, rel, path)

    monkeypatch.setattr(ckpt_mod.ArtifactWriter, "add_file", unreachable)
    run = run_in_process(spec)
    assert len(attempts) == ckpt_mod.UPLOAD_ATTEMPTS and "model" in run.artifacts
    assert json.loads(world.store.get_bytes("runs/pretrain/checkpoints/latest"))["tag"] == "step-5"


def test_nan_loss_stops_with_a_clear_reason_and_keeps_the_last_good_checkpoint(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = stage_spec(
        world, pretrain_resource(training={"maxSteps": 10, "maxBadSteps": 2}, checkpoint={"everySteps": 5})
    )
    _fault(monkeypatch, 8, lambda loss: loss * float("nan"))
    with pytest.raises(StageError, match=r"NaN/Inf on 3 consecutive batches at step 8.*step-5") as exc:
        run_in_process(spec)
    assert exc.value.retryable is False
    assert json.loads(world.store.get_bytes("runs/pretrain/checkpoints/latest"))["tag"] == "step-5"
    assert not world.store.exists("runs/pretrain/model/MANIFEST.json")


def test_tokenizer_and_vocab_mismatch_is_a_clear_error(world: World, tiny_tokenizer: Path) -> None:
    bad = publish_dataset(world.store, "tiny-corpus", world.tmp / "bad", tiny_tokenizer, vocab_size=1000)
    world.dataset = InputArtifacts(kind="Dataset", name="tiny-corpus", artifacts=bad.artifacts)
    with pytest.raises(InvalidInput, match=r"tokenizer has \d+ tokens but index.json says vocab_size 1000"):
        run_in_process(stage_spec(world, pretrain_resource()))


def test_continual_pretraining_starts_from_the_model_and_records_both_lineages(
    world: World, reference: tuple[World, Run], tiny_tokenizer: Path
) -> None:
    old = reference[1].artifacts["model"]
    world.extra_inputs["Dataset/old-corpus"] = publish_dataset(
        world.store, "old-corpus", world.tmp, tiny_tokenizer, seed=5, n_sentences=300
    )
    resource = pretrain_resource(
        initFrom={"uri": old},
        replay={"datasetRef": {"name": "old-corpus"}, "fraction": 0.25},
        training={"maxSteps": 4},
        optimizer={"warmupSteps": 1, "lr": 0.001},
        deepspeed={"zeroStage": 0},
    )  # stage 0 (plain data parallel) covered here
    run = run_in_process(stage_spec(world, resource))
    ref_final = reference[1].outcome.losses[STEPS]
    assert run.outcome.losses[1] < 0.8 * math.log(300)  # starts trained, not from scratch
    assert abs(run.outcome.losses[1] - ref_final) < 1.0
    meta = read_manifest(world.store, "runs/pretrain/model")
    assert meta is not None
    assert meta.metadata["lineage"] == [old, "Dataset/old-corpus", "Dataset/tiny-corpus"]
    card = (Path(run.artifacts["model"].removeprefix("file://")) / "README.md").read_text()
    assert "Continued from" in card and "Replay of Dataset `old-corpus`" in card
