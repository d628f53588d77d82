"""Artifacts on both backends: commit protocol, crash safety, verification and the download cache."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lmforge.store import (
    MANIFEST_NAME,
    ArtifactCorrupt,
    ArtifactIncomplete,
    ArtifactWriter,
    FileEntry,
    Store,
    StoreError,
    download_artifact,
    is_complete,
    read_manifest,
)

REPO = Path(__file__).resolve().parents[2]


def _make_dir(root: Path) -> Path:
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "config.json").write_text('{"a": 1}')
    (root / "sub" / "weights.bin").write_bytes(os.urandom(100_000))
    (root / "sub" / "deeper" / "tok.txt").write_text("hello")
    return root


def test_write_and_read(store: Store, tmp_path: Path) -> None:
    src = _make_dir(tmp_path / "src")
    w = ArtifactWriter(store, "models/m1")
    assert w.add_dir(src, "model") == [
        "model/config.json",
        "model/sub/deeper/tok.txt",
        "model/sub/weights.bin",
    ]
    w.add_bytes("eval.json", b"{}")
    single = tmp_path / "single.txt"
    single.write_text("one")
    w.add_file("extra/single.txt", single)
    assert read_manifest(store, "models/m1") is None  # nothing visible before commit
    manifest = w.commit("model", {"step": 100, "loss": 1.5})

    assert manifest.kind == "model" and manifest.metadata == {"step": 100, "loss": 1.5}
    assert manifest.total_size == sum(e.size for e in manifest.files.values())
    assert manifest.files["model/sub/weights.bin"].size == 100_000
    assert manifest.created.tzinfo is not None
    read = read_manifest(store, "models/m1")
    assert read == manifest
    assert is_complete(store, "models/m1")
    raw = json.loads(store.get_bytes(f"models/m1/{MANIFEST_NAME}"))
    assert raw["schema_version"] == 1 and set(raw) >= {"kind", "created", "files", "total_size", "metadata"}


def test_absent_artifact(store: Store, tmp_path: Path) -> None:
    assert read_manifest(store, "none") is None
    assert not is_complete(store, "none")
    with pytest.raises(ArtifactIncomplete, match="none"):
        download_artifact(store, "none", tmp_path / "dl")


def test_download_verifies_and_caches(store: Store, tmp_path: Path) -> None:
    src = _make_dir(tmp_path / "src")
    w = ArtifactWriter(store, "a")
    w.add_dir(src)
    manifest = w.commit("dataset", {})
    dest = tmp_path / "dl"
    assert download_artifact(store, "a", dest) == manifest
    for rel in manifest.files:
        assert (dest / rel).read_bytes() == (src / rel).read_bytes()
    # The download is itself a complete local artifact.
    from lmforge.store import LocalStore

    assert read_manifest(LocalStore(dest), "") == manifest

    # Cache: an intact file is not fetched again (mtime unchanged); a damaged local copy is replaced.
    weights = dest / "sub" / "weights.bin"
    before = weights.stat().st_mtime_ns
    (dest / "config.json").write_text("tampered locally")
    download_artifact(store, "a", dest)
    assert weights.stat().st_mtime_ns == before
    assert (dest / "config.json").read_text() == '{"a": 1}'


def test_corrupt_file_detected(store: Store, tmp_path: Path) -> None:
    src = _make_dir(tmp_path / "src")
    w = ArtifactWriter(store, "c")
    w.add_dir(src)
    w.commit("checkpoint", {})
    store.put_bytes("c/sub/weights.bin", b"x" * 100_000)  # same size, different content
    assert is_complete(store, "c")  # size check only; the hash check happens on download
    with pytest.raises(ArtifactCorrupt, match=r"sub/weights\.bin"):
        download_artifact(store, "c", tmp_path / "dl")
    assert not (tmp_path / "dl" / "sub" / "weights.bin").exists()
    assert not (tmp_path / "dl" / MANIFEST_NAME).exists()


def test_truncated_or_missing_file(store: Store, tmp_path: Path) -> None:
    w = ArtifactWriter(store, "t")
    w.add_bytes("a", b"12345")
    w.add_bytes("b", b"678")
    w.commit("x", {})
    store.put_bytes("t/a", b"12")
    assert not is_complete(store, "t")
    store.delete_prefix("t/b")
    with pytest.raises(ArtifactCorrupt):
        download_artifact(store, "t", tmp_path / "dl")


def test_garbage_manifest(store: Store) -> None:
    store.put_bytes(f"g/{MANIFEST_NAME}", b"{not json")
    with pytest.raises(ArtifactCorrupt, match=MANIFEST_NAME):
        read_manifest(store, "g")
    store.put_bytes(f"g/{MANIFEST_NAME}", json.dumps({"kind": "x"}).encode())
    with pytest.raises(ArtifactCorrupt):
        read_manifest(store, "g")


def test_manifest_cannot_escape_dest(store: Store, tmp_path: Path) -> None:
    evil = {
        "schema_version": 1,
        "kind": "x",
        "created": "2024-01-01T00:00:00Z",
        "files": {"../../evil": {"size": 1, "sha256": "0" * 64}},
        "total_size": 1,
        "metadata": {},
    }
    store.put_bytes(f"e/{MANIFEST_NAME}", json.dumps(evil).encode())
    with pytest.raises(ArtifactCorrupt, match="bad file name"):
        download_artifact(store, "e", tmp_path / "dl")


def test_writer_rules(store: Store) -> None:
    w = ArtifactWriter(store, "r")
    with pytest.raises(StoreError, match="reserved"):
        w.add_bytes(MANIFEST_NAME, b"{}")
    w.add_bytes("a", b"1")
    w.commit("x", {})
    with pytest.raises(StoreError, match="committed"):
        w.add_bytes("b", b"2")
    with pytest.raises(StoreError, match="committed"):
        w.commit("x", {})


def test_files_uploaded_earlier_are_listed_only_if_they_are_there(store: Store) -> None:
    # A writer that resumes file by file (the Dataset's shards) uploads some files in an earlier run.
    store.put_bytes("s/train-0.bin", b"rows")
    entry = FileEntry(size=4, sha256=hashlib.sha256(b"rows").hexdigest())
    w = ArtifactWriter(store, "s")
    w.add_uploaded("train-0.bin", entry)
    w.add_bytes("index.json", b"{}")
    assert w.commit("shards").files["train-0.bin"] == entry
    assert is_complete(store, "s")
    w = ArtifactWriter(store, "s")
    w.add_uploaded("train-1.bin", entry)  # never uploaded
    with pytest.raises(ArtifactIncomplete, match=r"train-1\.bin"):
        w.commit("shards")
    assert read_manifest(store, "s") is None


def test_republish_hides_old_manifest(store: Store) -> None:
    w = ArtifactWriter(store, "p")
    w.add_bytes("a", b"v1")
    w.commit("x", {"v": 1})
    w2 = ArtifactWriter(store, "p")  # starting a republish...
    assert read_manifest(store, "p") is None  # ...immediately hides v1
    w2.add_bytes("a", b"v2")
    assert w2.commit("x", {"v": 2}).metadata == {"v": 2}
    assert store.get_bytes("p/a") == b"v2"

    ArtifactWriter(store, "p", clear_existing=True).commit("empty", {})
    assert store.list("p") == [f"p/{MANIFEST_NAME}"]


_WRITER = """
import sys, time
from pathlib import Path
from lmforge.store import ArtifactWriter, open_store

store = open_store(sys.argv[1])
w = ArtifactWriter(store, "crash")
for i in range(3):
    w.add_bytes(f"part-{i}.bin", bytes([i]) * 1000)
big = Path(sys.argv[2])
w.add_file("big.bin", big)
print("WROTE", flush=True)
time.sleep(600)  # killed here, before commit
w.commit("checkpoint", {})
"""


@pytest.mark.parametrize("republish", [False, True], ids=["fresh", "republish"])
def test_killed_writer_leaves_incomplete_artifact(store: Store, tmp_path: Path, republish: bool) -> None:
    if republish:
        w = ArtifactWriter(store, "crash")
        w.add_bytes("part-0.bin", b"old")
        w.commit("checkpoint", {"v": 1})
        assert is_complete(store, "crash")
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(2_000_000))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, store.uri, str(big)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=REPO,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == b"WROTE", proc.stderr.read().decode() if proc.stderr else ""
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        proc.stdout and proc.stdout.close()
        proc.stderr and proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert "crash/part-2.bin" in store.list("crash")  # files were written...
    assert read_manifest(store, "crash") is None  # ...but the artifact is not visible
    assert not is_complete(store, "crash")
    with pytest.raises(ArtifactIncomplete):
        download_artifact(store, "crash", tmp_path / "dl")
