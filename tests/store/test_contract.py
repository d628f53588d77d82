"""The Store contract, run unchanged against LocalStore and S3Store (SeaweedFS)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmforge.store import ArtifactNotFound, Store, StoreError


def test_bytes_round_trip(store: Store) -> None:
    store.put_bytes("a/b.txt", b"hello")
    assert store.get_bytes("a/b.txt") == b"hello"
    store.put_bytes("a/b.txt", b"replaced")
    assert store.get_bytes("a/b.txt") == b"replaced"
    store.put_bytes("empty", b"")
    assert store.get_bytes("empty") == b""


def test_missing_key(store: Store, tmp_path: Path) -> None:
    with pytest.raises(ArtifactNotFound, match="nope"):
        store.get_bytes("nope")
    with pytest.raises(ArtifactNotFound, match="nope"):
        store.get_file("dir/nope", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not store.exists("nope")


def test_file_round_trip(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(bytes(range(256)) * 100)
    store.put_file("f/src.bin", src)
    dest = tmp_path / "deep" / "dir" / "dest.bin"
    store.get_file("f/src.bin", dest)
    assert dest.read_bytes() == src.read_bytes()
    assert [p.name for p in dest.parent.iterdir()] == ["dest.bin"]  # no temp file left


def test_put_file_missing_local(store: Store, tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="not found"):
        store.put_file("x", tmp_path / "missing")


def test_exists_and_list(store: Store) -> None:
    for key in ["r/a/1", "r/a/2", "r/ab/1", "r/b", "top"]:
        store.put_bytes(key, key.encode())
    assert store.exists("r/a/1")
    assert not store.exists("r/a")  # a "directory" is not an object
    assert store.list("") == ["r/a/1", "r/a/2", "r/ab/1", "r/b", "top"]
    assert store.list("r/a") == ["r/a/1", "r/a/2"]  # directory semantics: not r/ab
    assert store.list("r/a/") == ["r/a/1", "r/a/2"]
    assert store.list("r/b") == ["r/b"]
    assert store.list("nothing") == []
    assert store.sizes("r") == {"r/a/1": 5, "r/a/2": 5, "r/ab/1": 6, "r/b": 3}


def test_delete_prefix(store: Store) -> None:
    for key in ["r/a/1", "r/a/2", "r/ab/1", "keep"]:
        store.put_bytes(key, b"x")
    assert store.delete_prefix("r/a") == 2
    assert store.list("") == ["keep", "r/ab/1"]
    assert store.delete_prefix("missing") == 0
    assert store.delete_prefix("") == 2
    assert store.list("") == []


def test_child(store: Store) -> None:
    child = store.child("sub/dir")
    child.put_bytes("k", b"v")
    assert store.get_bytes("sub/dir/k") == b"v"
    assert child.list("") == ["k"]
    assert child.url("k") == store.url("sub/dir/k")
    assert child.uri == store.url("sub/dir")
    assert store.child("sub").child("dir").list("") == ["k"]


def test_invalid_keys_rejected(store: Store) -> None:
    for bad in ["../escape", "a/../../b", ""]:
        with pytest.raises(StoreError):
            store.put_bytes(bad, b"x")


def test_many_keys_paginate(store: Store) -> None:
    for i in range(30):
        store.put_bytes(f"many/{i:03d}", b"x")
    assert store.list("many") == [f"many/{i:03d}" for i in range(30)]
