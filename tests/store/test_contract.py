"""The Store contract, run unchanged against LocalStore and S3Store (SeaweedFS)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from lmforge.store import ArtifactNotFound, S3Store, Store, StoreError


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
    # S3 lists and deletes at most 1,000 keys per call: 1,100 keys need two pages and two batches.
    keys = [f"many/{i:04d}" for i in range(1100)]
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda k: store.put_bytes(k, b"x"), keys))
    pages: list[int] = []

    def count(**kwargs: Any) -> None:
        pages.append(len(kwargs["parsed"].get("Contents", [])))

    if isinstance(store, S3Store):
        store.client.meta.events.register("after-call.s3.ListObjectsV2", count)
    try:
        assert store.list("many") == keys
        assert len(store.sizes("many")) == 1100
    finally:
        if isinstance(store, S3Store):
            store.client.meta.events.unregister("after-call.s3.ListObjectsV2", count)
    if isinstance(store, S3Store):
        assert pages == [1000, 100, 1000, 100]  # the listing really crossed a page boundary, twice
    assert store.delete_prefix("many") == 1100
    assert store.list("many") == []
