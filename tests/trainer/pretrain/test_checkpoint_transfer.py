"""Checkpoint files move through S3 hashed on the stream (no extra read pass): the manifest's SHA-256
is of the bytes sent, a corrupted or truncated object is still caught on download, and a streamed
download with many parts completes (s3transfer deadlocks one with more parts than its window)."""

from __future__ import annotations

import copy
import hashlib
import os
import threading
from pathlib import Path

import pytest
from support.seaweed import SeaweedServer

from lmforge.store import ArtifactCorrupt, ArtifactWriter, S3Store, download_artifact
from lmforge.store import s3 as s3_mod

pytestmark = pytest.mark.s3

MB = 1024 * 1024


@pytest.fixture
def store(s3_server: SeaweedServer, monkeypatch: pytest.MonkeyPatch) -> S3Store:
    s3_server.apply_env(monkeypatch)
    # 1 MiB parts so a 12 MiB file is a 12-part transfer (more than s3transfer's default window of 10)
    small = copy.copy(s3_mod._STREAM_DOWNLOAD_CONFIG)
    small.multipart_threshold = small.multipart_chunksize = MB
    monkeypatch.setattr(s3_mod, "_STREAM_DOWNLOAD_CONFIG", small)
    return S3Store(s3_server.bucket, f"ckpt-transfer-{os.getpid()}-{id(small)}")


def _publish(store: S3Store, tmp_path: Path) -> bytes:
    data = os.urandom(12 * MB + 12345)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "optim.pt").write_bytes(data)
    writer = ArtifactWriter(store, "step-1")
    writer.add_dir(tmp_path / "src")
    assert writer.files["optim.pt"].sha256 == hashlib.sha256(data).hexdigest()
    assert writer.files["optim.pt"].size == len(data)
    writer.commit("pretrain-checkpoint")
    return data


def _download(store: S3Store, dest: Path) -> BaseException | None:
    """download_artifact in a thread with a deadline: a deadlock fails the test instead of hanging it."""
    box: list[BaseException | None] = [RuntimeError("download did not finish in 60 s")]

    def target() -> None:
        try:
            download_artifact(store, "step-1", dest, verify=True)
            box[0] = None
        except BaseException as exc:  # handed to the test thread
            box[0] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout=60)
    return box[0]


def test_streamed_hash_round_trip_with_many_parts(store: S3Store, tmp_path: Path) -> None:
    data = _publish(store, tmp_path)
    assert _download(store, tmp_path / "dest") is None
    assert (tmp_path / "dest" / "optim.pt").read_bytes() == data


@pytest.mark.parametrize("damage", ["corrupt", "truncated"])
def test_damaged_object_is_detected_on_the_streamed_download(store: S3Store, tmp_path: Path, damage: str) -> None:
    data = _publish(store, tmp_path)
    bad = data[: 5 * MB] + bytes(100) + data[5 * MB + 100 :] if damage == "corrupt" else data[:-MB]
    store.put_bytes("step-1/optim.pt", bad)
    exc = _download(store, tmp_path / "dest")
    assert isinstance(exc, ArtifactCorrupt) and "optim.pt" in str(exc)
    assert not (tmp_path / "dest" / "optim.pt").exists()  # the bad copy is removed
