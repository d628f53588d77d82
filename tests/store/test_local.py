"""LocalStore specifics: atomic replace, temp-file hygiene and directory layout."""

from __future__ import annotations

from pathlib import Path

from lmforge.store import LocalStore, open_store
from lmforge.store.base import TMP_MARKER


def test_layout_is_plain_files(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put_bytes("a/b/c.txt", b"x")
    assert (tmp_path / "a" / "b" / "c.txt").read_bytes() == b"x"
    assert store.url("a/b/c.txt") == (tmp_path / "a/b/c.txt").resolve().as_uri()
    assert open_store(store.uri).get_bytes("a/b/c.txt") == b"x"


def test_interrupted_write_is_invisible(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put_bytes("d/real", b"1")
    # What a writer killed between write and rename leaves behind:
    (tmp_path / "d" / f".half{TMP_MARKER}abc").write_bytes(b"partial")
    assert store.list("") == ["d/real"]
    assert store.delete_prefix("d") == 1
    assert not (tmp_path / "d").exists()


def test_no_temp_files_after_writes(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    src = tmp_path / "src"
    src.write_bytes(b"abc")
    store.put_file("out/x", src)
    store.put_bytes("out/y", b"y")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["x", "y"]


def test_missing_root_lists_empty(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "not-yet")
    assert store.list("") == []
    assert store.delete_prefix("") == 0
    store.put_bytes("k", b"v")  # created lazily
    assert store.list("") == ["k"]


def test_delete_root_keeps_root(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "root")
    store.put_bytes("a/b", b"1")
    store.put_bytes("c", b"2")
    assert store.delete_prefix("") == 2
    assert (tmp_path / "root").is_dir() and store.list("") == []
