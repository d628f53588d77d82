"""The checkpoint protocol pretraining and alignment share (`lmforge.trainer.checkpoints`), on a
local store: pointer after manifest, verified fetch with fallback past a damaged latest, keep-K,
and two writers that never move `latest` backwards or prune each other's newer steps."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmforge.store import LocalStore, read_manifest
from lmforge.store.errors import StoreError
from lmforge.trainer.align.checkpoints import CheckpointStore
from lmforge.trainer.checkpoints import LATEST_KEY, CheckpointLog


def _save(log: CheckpointLog, step: int) -> None:
    writer = log.begin(step)
    writer.add_bytes("weights.bin", f"weights at {step}".encode())
    assert log.commit(step, "test-checkpoint", writer=writer)


def _steps(store: LocalStore) -> list[str]:
    return sorted({k.split("/")[1] for k in store.list("checkpoints") if k.count("/") >= 2})


def test_pointer_names_the_newest_complete_checkpoint_and_keeps_the_last_k(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    log = CheckpointLog(store, keep_last=2)
    assert log.pointer() is None and log.candidates() == []
    for step in (5, 10, 15):
        _save(log, step)
    assert log.pointer() == {**(log.pointer() or {}), "tag": "step-15", "step": 15}
    assert _steps(store) == ["step-10", "step-15"]
    manifest = read_manifest(store, "checkpoints/step-15")
    assert manifest is not None and manifest.kind == "test-checkpoint" and manifest.metadata == {"step": 15}
    assert log.candidates() == ["step-15", "step-10"]


def test_a_damaged_latest_is_skipped_for_the_previous_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = LocalStore(tmp_path / "store")
    log = CheckpointLog(store, keep_last=3)
    for step in (5, 10):
        _save(log, step)
    store.put_bytes("checkpoints/step-10/weights.bin", b"bit rot!")
    names = log.candidates()
    assert [n for n in names if log.fetch(n, tmp_path / n)][:1] == ["step-5"]
    assert "checkpoint step-10 is damaged and is skipped" in capsys.readouterr().err
    assert not (tmp_path / "step-10").exists() and (tmp_path / "step-5" / "weights.bin").read_bytes() == b"weights at 5"


def test_a_slower_writer_never_moves_latest_back_nor_prunes_newer_steps(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    ahead, behind = CheckpointLog(store, keep_last=1), CheckpointLog(store, keep_last=1)
    _save(ahead, 20)
    _save(behind, 10)  # a retried pod still running beside its successor
    assert (ahead.pointer() or {})["step"] == 20
    assert "step-20" in _steps(store)  # the older writer's pruning left the newer step alone
    assert ahead.candidates()[0] == "step-20"


def test_an_unreadable_pointer_falls_back_on_the_listing(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    log = CheckpointLog(store, keep_last=3)
    for step in (5, 10):
        _save(log, step)
    store.put_bytes(LATEST_KEY, b"{not json")
    assert log.candidates() == ["step-10", "step-5"]


def test_alignment_restores_through_the_same_protocol_with_fallback(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    ckpts = CheckpointStore(store, keep_last=3)
    for step in (4, 8):
        local = tmp_path / "train" / f"checkpoint-{step}"
        local.mkdir(parents=True)
        (local / "state.pt").write_bytes(f"state {step}".encode())
        assert ckpts.save(local, step) is not None
    store.delete_prefix("checkpoints/step-8/state.pt")  # latest damaged: a file gone
    dest = tmp_path / "resume"
    found = ckpts.restore(dest)
    assert found == (dest / "checkpoint-4", 4) and (dest / "checkpoint-4" / "state.pt").read_bytes() == b"state 4"
    assert ckpts.restore(dest, download=False) == found  # the node's other processes use the same one
    store.delete_prefix("checkpoints/step-4/state.pt")
    with pytest.raises(StoreError, match="step-8, step-4 are all damaged"):
        ckpts.restore(dest)


def test_a_pointer_in_alignments_old_plain_text_form_still_resumes(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    writer = CheckpointLog(store, 2).begin(7)
    writer.add_bytes("state.pt", b"old")
    writer.commit("checkpoint", {"step": 7})
    store.put_bytes(LATEST_KEY, b"step-7")
    found = CheckpointStore(store, keep_last=2).restore(tmp_path / "resume")
    assert found is not None and found[1] == 7
