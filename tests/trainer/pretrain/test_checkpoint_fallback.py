"""A damaged newest checkpoint: resume falls back to the newest older complete one with a warning,
and `latest` only ever names a complete checkpoint again. Also: the ETA of a resumed run counts the
steps this process ran, not the steps since 0."""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from lmforge.api.contract import StageName
from lmforge.store import LocalStore, download_artifact, read_manifest
from lmforge.trainer import progress as progress_mod
from lmforge.trainer.pretrain import checkpoint as ckpt_mod
from lmforge.trainer.pretrain.dist import World as Ranks
from lmforge.trainer.progress import ProgressReporter

from .conftest import World, module_world, pretrain_resource, run_in_process, stage_spec

pytestmark = pytest.mark.ml

CKPTS = "runs/pretrain/checkpoints"
RESOURCE = pretrain_resource(
    training={"maxSteps": 10}, checkpoint={"everySteps": 5, "keepLast": 2}, validation={"everySteps": 50, "batches": 1}
)


class FakeClock:
    """`time` for the progress module: 1 ms per reading, plus jumps the test makes."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        self.now += 0.001
        return self.now


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: Path) -> Iterator[World]:
    """A 10-step run: complete checkpoints step-5 and step-10, `latest` → step-10."""
    with module_world(tmp_path_factory.mktemp("fallback"), tiny_tokenizer) as w:
        run_in_process(stage_spec(w, RESOURCE))
        yield w


def _copy(w: World, tmp: Path) -> World:
    """The trained store copied, so each test damages its own (the Dataset stays in the original)."""
    shutil.copytree(w.tmp / "store" / "runs", tmp / "store" / "runs")
    store = LocalStore(tmp / "store")
    return World(store, f"file://{tmp / 'store'}", w.dataset, tmp)


def _largest(root: Path) -> Path:
    return max(
        (p for p in root.rglob("*") if p.is_file() and p.name != "MANIFEST.json"), key=lambda p: p.stat().st_size
    )


def _flip_bytes(root: Path) -> None:
    path = _largest(root)
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)  # same size, different content
    path.write_bytes(bytes(data))


def _delete_file(root: Path) -> None:
    _largest(root).unlink()


def _delete_manifest(root: Path) -> None:
    (root / "MANIFEST.json").unlink()


@pytest.mark.parametrize(
    "damage", [_flip_bytes, _delete_file, _delete_manifest], ids=["corrupt-file", "missing-file", "no-manifest"]
)
def test_damaged_latest_falls_back_to_the_previous_checkpoint(
    trained: World,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    damage: Callable[[Path], None],
) -> None:
    w = _copy(trained, tmp_path)
    monkeypatch.setenv("LMFORGE_WORK_DIR", str(tmp_path / "work"))
    damage(tmp_path / "store" / CKPTS / "step-10")
    assert json.loads(w.store.get_bytes(f"{CKPTS}/latest"))["tag"] == "step-10"

    clock = FakeClock()
    monkeypatch.setattr(progress_mod, "time", SimpleNamespace(monotonic=clock.monotonic))
    real_resume = ckpt_mod.Checkpoints.resume

    def slow_resume(self: ckpt_mod.Checkpoints, engine: object) -> object:
        clock.now += 1000.0  # set-up and download took 1000 s; the 5 steps before the resume took none
        return real_resume(self, engine)

    monkeypatch.setattr(ckpt_mod.Checkpoints, "resume", slow_resume)
    capfd.readouterr()
    run = run_in_process(stage_spec(w, RESOURCE))

    assert run.outcome.resumed_from == 5
    assert sorted(run.outcome.losses) == [6, 7, 8, 9, 10]
    err = capfd.readouterr().err
    assert "warning: checkpoint step-10 is damaged and is skipped" in err
    assert "falling back to an older checkpoint" in err
    assert any(r.message == "resumed from checkpoint step-5 (step-10 damaged, skipped)" for r in run.records)
    # The rerun saved step-10 again, completely, and only then moved `latest` to it.
    assert json.loads(w.store.get_bytes(f"{CKPTS}/latest"))["tag"] == "step-10"
    download_artifact(w.store, f"{CKPTS}/step-10", tmp_path / "check", verify=True)
    assert read_manifest(w.store, f"{CKPTS}/step-5") is not None
    # ETA from this process's steps since the resume: ~1 ms per reading, not 1000 s spread over 6+ steps.
    etas = {r.step: r.eta_seconds for r in run.records if r.metrics and r.step < 10}
    assert sorted(etas) == [6, 7, 8, 9]
    assert all(eta is not None and 0 < eta < 0.1 for eta in etas.values()), etas


def test_every_checkpoint_damaged_is_a_clear_error(
    trained: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lmforge.store import StoreError

    w = _copy(trained, tmp_path)
    monkeypatch.setenv("LMFORGE_WORK_DIR", str(tmp_path / "work"))
    for name in ("step-5", "step-10"):
        _flip_bytes(tmp_path / "store" / CKPTS / name)
    with pytest.raises(StoreError, match=r"no usable checkpoint .*step-10, step-5 are all damaged"):
        run_in_process(stage_spec(w, RESOURCE))


def test_unreadable_pointer_falls_back_to_the_newest_complete_checkpoint(trained: World, tmp_path: Path) -> None:
    w = _copy(trained, tmp_path)
    w.store.put_bytes(f"{CKPTS}/latest", b"{not json")
    ckpts = ckpt_mod.Checkpoints(w.store.child("runs/pretrain"), tmp_path / "local", _one_rank(), keep_last=2)
    assert ckpts.candidates() == ["step-10", "step-5"]


def _one_rank() -> Ranks:
    return Ranks(rank=0, size=1, local_rank=0, local_size=1)


def test_eta_counts_only_the_steps_since_count_from(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [0.0]
    monkeypatch.setattr(progress_mod, "time", SimpleNamespace(monotonic=lambda: now[0]))
    reporter = ProgressReporter(StageName.PRETRAIN, "r", None, stream=io.StringIO())
    now[0] = 100.0  # set-up, download: not part of the training rate
    reporter.count_from(20)
    now[0] = 110.0
    assert reporter.progress(21, 30).eta_seconds == pytest.approx(90.0)  # 10 s per step, 9 steps left
    now[0] = 130.0
    assert reporter.progress(23, 30).eta_seconds == pytest.approx(70.0)
    fresh = ProgressReporter(StageName.PRETRAIN, "r", None, stream=io.StringIO())
    now[0] = 140.0
    assert fresh.progress(1, 3).eta_seconds == pytest.approx(20.0)  # default: counted from 0 at creation
