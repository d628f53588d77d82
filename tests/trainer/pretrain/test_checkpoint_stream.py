"""Checkpoints to S3 are serialised straight into multipart uploads (no local file first): the manifest
describes exactly the bytes stored, a resume restores the saved weights, and an upload that fails in
the middle of the stream neither hangs DeepSpeed's save nor commits a partial checkpoint -- the save
falls back to the local-file path and still commits a complete one."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.seaweed import SeaweedServer

from lmforge.store import S3Store, read_manifest
from lmforge.store.errors import StoreError
from lmforge.store.hashing import Readable
from lmforge.trainer.pretrain import streaming
from lmforge.trainer.pretrain.checkpoint import Checkpoints
from lmforge.trainer.pretrain.dist import World, process_group
from lmforge.trainer.pretrain.streaming import CHUNK, ChunkPipe

pytestmark = [pytest.mark.ml, pytest.mark.s3]


def test_pipe_reads_exact_sizes_across_chunks_and_stops_at_eof() -> None:
    pipe = ChunkPipe()
    data = os.urandom(2 * CHUNK + 123)
    t = threading.Thread(target=lambda: (pipe.write(memoryview(data)), pipe.close()), daemon=True)
    t.start()
    parts = [pipe.read(CHUNK // 3 + 1) for _ in range(7)]
    assert [len(p) for p in parts[:6]] == [CHUNK // 3 + 1] * 6  # exact sizes: s3transfer needs them
    assert b"".join(parts) + pipe.read() == data
    assert pipe.read(10) == b""
    t.join(timeout=10)
    assert not t.is_alive()


@pytest.fixture(scope="module")
def ranks() -> Iterator[World]:
    with process_group(False) as world:
        yield world


@pytest.fixture
def engine(ranks: World) -> Any:
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
    eng.step()  # materialise the optimizer state (the multi-MB file)
    return eng


@pytest.fixture
def store(s3_server: SeaweedServer, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> S3Store:
    s3_server.apply_env(monkeypatch)
    s = S3Store(s3_server.bucket, f"ckpt-stream-{os.getpid()}-{request.node.name}")
    s.delete_prefix("")
    return s


def _weights(engine: Any) -> list[Any]:
    return [p.detach().clone() for p in engine.module.parameters()]


def _check_resume(engine: Any, ckpts: Checkpoints, saved: list[Any]) -> None:
    import torch

    with torch.no_grad():
        for p in engine.module.parameters():
            p.add_(1.0)
    state = ckpts.resume(engine)
    assert state is not None and state["step"] == 1
    for a, b in zip(saved, _weights(engine), strict=True):
        assert torch.equal(a, b)


def test_streamed_save_stores_what_the_manifest_says_and_resumes(
    engine: Any, ranks: World, store: S3Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    streamed: list[str] = []
    real = S3Store.put_stream_hashed

    def spy(self: S3Store, key: str, stream: Readable) -> tuple[int, str]:
        streamed.append(key)
        return real(self, key, stream)

    monkeypatch.setattr(S3Store, "put_stream_hashed", spy)
    ckpts = Checkpoints(store, tmp_path / "local", ranks, keep_last=2)
    saved = _weights(engine)
    assert ckpts.save(engine, 1, {"step": 1}, {"extra.json": b"{}"})
    manifest = read_manifest(store, "checkpoints/step-1")
    assert manifest is not None
    assert sorted(streamed) == sorted(f for f in manifest.files if f.endswith("_states.pt"))
    assert any("optim_states" in f for f in streamed) and any("model_states" in f for f in streamed)
    assert {"extra.json", "rng-rank0.pt"} <= set(manifest.files)
    for rel, entry in manifest.files.items():
        data = store.get_bytes(f"checkpoints/step-1/{rel}")
        assert (len(data), hashlib.sha256(data).hexdigest()) == (entry.size, entry.sha256)
    assert not (tmp_path / "local" / "step-1").exists()  # nothing left on local disk
    _check_resume(engine, ckpts, saved)


def test_upload_failing_mid_stream_falls_back_to_a_complete_local_save(
    engine: Any,
    ranks: World,
    store: S3Store,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    def broken(self: S3Store, key: str, stream: Readable) -> tuple[int, str]:
        stream.read(1024)  # the writer is mid-file, possibly blocked on the full pipe
        raise StoreError(f"cannot write {self.url(key)}: connection reset")

    monkeypatch.setattr(S3Store, "put_stream_hashed", broken)
    monkeypatch.setattr(streaming, "CHUNK", 64 * 1024)  # a pipe of 2 x 64 KiB: the writer must block
    monkeypatch.setattr(streaming, "QUEUED_CHUNKS", 2)
    ckpts = Checkpoints(store, tmp_path / "local", ranks, keep_last=2, backoff_s=0.0)
    saved = _weights(engine)
    done = threading.Event()
    result: list[bool] = []

    def save() -> None:
        result.append(ckpts.save(engine, 1, {"step": 1}, {}))
        done.set()

    t = threading.Thread(target=save, daemon=True)
    t.start()
    assert done.wait(timeout=120), "save hung after a failed streamed upload"
    assert result == [True]
    assert "a streamed upload failed" in capfd.readouterr().err
    manifest = read_manifest(store, "checkpoints/step-1")
    assert manifest is not None and any("optim_states" in f for f in manifest.files)
    _check_resume(engine, ckpts, saved)
