"""Asynchronous checkpoints (`checkpoint.async`): training goes on while a save uploads, `latest` moves
only once the upload is complete, a SIGKILL in the middle of a background upload leaves the previous
checkpoint as `latest` (and the retry resumes from it), at most one save is in flight, the files are
the synchronous save's byte for byte, and an error in the background fails the stage clearly."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.seaweed import SeaweedServer
from support.waiting import consistently, eventually

from lmforge.api.contract import RECORD_PREFIX, ProgressRecord
from lmforge.store import LocalStore, S3Store, Store, read_manifest
from lmforge.store.errors import ArtifactNotFound
from lmforge.store.hashing import Readable
from lmforge.trainer.errors import StageError
from lmforge.trainer.pretrain import stage as stage_mod
from lmforge.trainer.pretrain.checkpoint import Checkpoints, host_copy_fits
from lmforge.trainer.pretrain.dist import World as Ranks
from lmforge.trainer.pretrain.dist import process_group

from .conftest import REPO, World, pretrain_resource, run_in_process, stage_spec

pytestmark = pytest.mark.ml

CKPTS = "runs/pretrain/checkpoints"


def _latest_step(store: Store, prefix: str = CKPTS) -> int | None:
    """The step `latest` names — after checking that it names a committed checkpoint."""
    try:
        pointer = json.loads(store.get_bytes(f"{prefix}/latest"))
    except ArtifactNotFound:
        return None
    assert read_manifest(store, f"{prefix}/{pointer['tag']}") is not None, f"latest names {pointer} unfinished"
    return int(pointer["step"])


def _lines(stream: Any, out: queue.Queue[str | None]) -> None:
    for line in stream:
        out.put(line)
    out.put(None)


SIGKILL_WAIT_S = 420.0
"""How long the SIGKILL test waits for the stage to reach the held upload and the next save (~1 min
on a loaded 2-core machine); the stage itself exits with its stacks after SIGKILL_STAGE_DEADLINE_S, and
pytest-timeout ends the whole test (the in-process retry included) after 900 s."""
SIGKILL_STAGE_DEADLINE_S = 600.0


def _stacks(proc: subprocess.Popen[str], stderr: list[str]) -> str:
    """Every thread's stack of the stage (faulthandler, registered on SIGUSR1 by hanging_upload.py)."""
    if proc.poll() is not None:
        return "(the stage had exited) " + "".join(stderr[-30:])
    before = len(stderr)
    proc.send_signal(signal.SIGUSR1)
    try:  # the main thread's dump ends at the helper's `<module>` frame
        eventually(lambda: any("in <module>" in line for line in stderr[before:]), timeout=15, what="the stack dump")
    except AssertionError:
        pass
    return "".join(stderr[before:])


@pytest.mark.timeout(900)
def test_sigkill_during_a_background_upload_resumes_from_the_previous_complete_step(
    world: World, tmp_path: Path
) -> None:
    """Step-20's upload is held forever; training goes on to step 30, whose save waits for it (at most
    one save in flight); the stage is SIGKILLed there. What the test waits for are marker files the
    helper writes (the upload began, the loop started save(30)), not the throttled progress lines:
    waiting for a progress line between two saves hung whenever the steps between them took under the
    0.5 s line interval — the stage was correctly blocked in the next save and printed nothing more."""
    resource = pretrain_resource(
        training={"maxSteps": 2000},
        checkpoint={"everySteps": 10, "keepLast": 2},
        validation={"everySteps": 5000, "batches": 1},
    )
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(stage_spec(world, resource).wire()))
    markers = tmp_path / "markers"
    markers.mkdir()
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
        "LMFORGE_WORK_DIR": str(tmp_path / "work"),
    }
    helper = Path(__file__).with_name("hanging_upload.py")
    command = [sys.executable, str(helper), str(path), str(markers), "20", str(SIGKILL_STAGE_DEADLINE_S)]
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO, start_new_session=True
    )  # its own process group: killed as a whole
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_lines, args=(proc.stdout, lines), daemon=True).start()
    stderr: list[str] = []
    threading.Thread(target=lambda: stderr.extend(proc.stderr or []), daemon=True).start()
    newest = [0]
    seen_latest: set[int] = set()

    def held_while_training_went_on() -> bool | None:
        """Drain progress records; true once step-20's upload is held and the loop began save(30)."""
        while True:
            try:
                line = lines.get_nowait()
            except queue.Empty:
                break
            assert line is not None, "the stage exited: " + "".join(stderr[-20:])
            if line.startswith(RECORD_PREFIX):
                record = ProgressRecord.model_validate_json(line[len(RECORD_PREFIX) :])
                if "loss" in record.metrics:
                    newest[0] = max(newest[0], record.step)
        step = _latest_step(world.store)  # checked at every poll: never an unfinished checkpoint
        if step is not None:
            seen_latest.add(step)
        return ((markers / "uploading-step-20").exists() and (markers / "saving-step-30").exists()) or None

    try:
        try:
            eventually(
                held_while_training_went_on,
                timeout=SIGKILL_WAIT_S,
                interval=0.2,
                what="step-20's upload held and training on to the save of step 30",
            )
        except AssertionError as exc:
            seen = sorted(p.name for p in markers.iterdir())
            raise AssertionError(
                f"{exc}; markers {seen}, newest progress step {newest[0]}; "
                f"the stage's threads:\n{_stacks(proc, stderr)}"
            ) from exc
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):  # whatever is left of the group, on any failure
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert seen_latest == {10}, seen_latest  # never moved to the checkpoint still uploading
    assert _latest_step(world.store) == 10
    assert read_manifest(world.store, f"{CKPTS}/step-20") is None  # its upload never completed

    retry = run_in_process(
        stage_spec(
            world,
            pretrain_resource(
                training={"maxSteps": 13},
                checkpoint={"everySteps": 10, "keepLast": 2},
                validation={"everySteps": 5000, "batches": 1},
            ),
        )
    )
    assert retry.outcome.resumed_from == 10
    assert sorted(retry.outcome.losses) == [11, 12, 13]
    assert _latest_step(world.store) == 13  # the final save waited for its upload


def test_an_error_in_the_background_save_fails_the_stage_clearly(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    real = torch.save
    saves = [0]

    def broken(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        if threading.current_thread().name.startswith("lmforge-ckpt-step-10"):  # step-10's background save
            saves[0] += 1
            raise RuntimeError("cannot pickle the optimizer state")
        real(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", broken)
    spec = stage_spec(world, pretrain_resource(training={"maxSteps": 10}, checkpoint={"everySteps": 5}))
    with pytest.raises(
        StageError,
        match=r"background save of checkpoint step-10 failed on rank 0: "
        r"RuntimeError: cannot pickle the optimizer state",
    ) as exc:
        run_in_process(spec)
    assert exc.value.retryable is False and saves[0] == 1  # not retried: it is not the store refusing
    assert _latest_step(world.store) == 5
    assert not world.store.exists("runs/pretrain/model/MANIFEST.json")


def test_without_room_for_a_host_copy_checkpoints_are_saved_synchronously(
    world: World, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    modes: list[bool] = []
    real_init = Checkpoints.__init__

    def spy(self: Checkpoints, *args: Any, **kwargs: Any) -> None:
        real_init(self, *args, **kwargs)
        modes.append(self.asynchronous)

    monkeypatch.setattr(Checkpoints, "__init__", spy)
    monkeypatch.setattr(stage_mod, "checkpoint_bytes", lambda *a, **k: 2.0**50)  # a 1 PiB checkpoint state
    run = run_in_process(stage_spec(world, pretrain_resource(training={"maxSteps": 5}, checkpoint={"everySteps": 5})))
    assert modes == [False] and "model" in run.artifacts
    assert "saving checkpoints synchronously" in capfd.readouterr().err
    assert _latest_step(world.store) == 5


@pytest.mark.parametrize(
    ("snapshot", "processes", "available", "fits"),
    [
        pytest.param(1e9, 1, 4e9, True, id="a-quarter-of-the-memory"),
        pytest.param(1e9, 2, 4e9, True, id="two-processes-at-half-exactly"),
        pytest.param(1e9, 3, 4e9, False, id="three-processes-over-half"),
        pytest.param(3e9, 1, 4e9, False, id="one-big-copy"),
    ],
)
def test_host_copy_fits_in_half_the_available_memory(
    snapshot: float, processes: int, available: float, fits: bool
) -> None:
    assert host_copy_fits(snapshot, processes, available) is fits


# -- the save itself, against a real S3 server -------------------------------------------------------


@pytest.fixture(scope="module")
def ranks() -> Iterator[Ranks]:
    with process_group(False) as world:
        yield world


@pytest.fixture
def engine(ranks: Ranks) -> Any:
    import deepspeed
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 1024), torch.nn.Linear(1024, 256))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    eng, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=opt,
        config={"train_micro_batch_size_per_gpu": 1, "bf16": {"enabled": True}, "zero_optimization": {"stage": 1}},
    )
    x = torch.randn(1, 256, dtype=torch.bfloat16)
    eng.backward(eng(x).float().pow(2).mean())
    eng.step()  # materialise the optimizer state
    return eng


@pytest.fixture
def store(s3_server: SeaweedServer, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> S3Store:
    s3_server.apply_env(monkeypatch)
    s = S3Store(s3_server.bucket, f"ckpt-async-{os.getpid()}-{request.node.name}")
    s.delete_prefix("")
    return s


def _digests(store: Store, prefix: str) -> dict[str, str]:
    manifest = read_manifest(store, prefix)
    assert manifest is not None
    return {rel: hashlib.sha256(store.get_bytes(f"{prefix}/{rel}")).hexdigest() for rel in manifest.files}


@pytest.fixture(params=["s3", "local"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    """An S3 store (files streamed into uploads) or a local one (files written, then copied)."""
    if request.param == "s3":
        s3: Store = request.getfixturevalue("store")
        return s3
    return LocalStore(tmp_path / "store")


def test_background_save_writes_the_synchronous_files_byte_for_byte(
    engine: Any, ranks: Ranks, any_store: Store, tmp_path: Path
) -> None:
    import torch

    store = any_store
    sync = Checkpoints(store.child("sync"), tmp_path / "sync", ranks, keep_last=2)
    background = Checkpoints(store.child("async"), tmp_path / "async", ranks, keep_last=2, asynchronous=True)
    state = torch.get_rng_state()
    assert sync.save(engine, 1, {"step": 1, "data": {"epoch": 0}}, {"extra.json": b"{}"})
    torch.set_rng_state(state)  # the same RNG state in both rng-rank0.pt files
    assert background.save(engine, 1, {"step": 1, "data": {"epoch": 0}}, {"extra.json": b"{}"})
    expected = _digests(store, "sync/checkpoints/step-1")
    assert any("optim_states" in f for f in expected) and "extra.json" in expected
    assert _digests(store, "async/checkpoints/step-1") == expected
    assert background.last_committed == 1
    assert not store.list("async/checkpoints/.pending")

    saved = [p.detach().clone() for p in engine.module.parameters()]
    with torch.no_grad():
        for p in engine.module.parameters():
            p.add_(1.0)
    resumed = background.resume(engine)
    assert resumed is not None and resumed["step"] == 1
    assert all(torch.equal(a, p) for a, p in zip(saved, engine.module.parameters(), strict=True))


def test_latest_moves_after_the_upload_and_the_next_save_waits_for_it(
    engine: Any, ranks: Ranks, store: S3Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    gate = threading.Event()
    started = threading.Event()
    real = S3Store.put_stream_hashed

    def gated(self: S3Store, key: str, stream: Readable) -> tuple[int, str]:
        started.set()
        gate.wait()
        return real(self, key, stream)

    monkeypatch.setattr(S3Store, "put_stream_hashed", gated)
    ckpts = Checkpoints(store, tmp_path / "local", ranks, keep_last=3, asynchronous=True)
    saved = [p.detach().clone() for p in engine.module.parameters()]
    t0 = time.monotonic()
    assert ckpts.save(engine, 1, {"step": 1}, {}, wait=False) is False  # returns with the upload pending
    assert started.wait(timeout=30) and time.monotonic() - t0 < 30
    with torch.no_grad():  # training goes on: the live weights change under the save in flight
        for p in engine.module.parameters():
            p.mul_(0.0)
    second_done = threading.Event()

    def second() -> None:
        ckpts.save(engine, 2, {"step": 2}, {}, wait=False)
        second_done.set()

    t = threading.Thread(target=second, daemon=True)
    t.start()
    consistently(lambda: not second_done.is_set() and not store.exists("checkpoints/latest"), duration=1.0)
    gate.set()  # step 1's upload completes; the second save may start
    assert second_done.wait(timeout=60)
    t.join(timeout=10)
    assert _latest_step(store, "checkpoints") in (1, 2)
    assert ckpts.finish() is True
    assert _latest_step(store, "checkpoints") == 2 and ckpts.last_committed == 2

    for p in engine.module.parameters():  # step 1 holds the weights of when it was saved, not later ones
        torch.nn.init.constant_(p.data, 5.0)
    name = "step-1"
    assert ckpts._fetch(name)
    ckpts._restore(engine, name)
    assert all(torch.equal(a, p) for a, p in zip(saved, engine.module.parameters(), strict=True))
