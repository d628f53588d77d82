"""URI parsing and key validation: the part of the store that guards against path escapes."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmforge.store import LocalStore, S3Store, StoreError, open_store
from lmforge.store.uri import join_key, normalize_key, normalize_prefix, parse_store_uri


def test_parse_local_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_store_uri(tmp_path.as_uri()).path == tmp_path.resolve()
    assert parse_store_uri(str(tmp_path)).path == tmp_path.resolve()
    monkeypatch.chdir(tmp_path)
    parsed = parse_store_uri("rel/dir")
    assert parsed.scheme == "file" and parsed.path == tmp_path.resolve() / "rel" / "dir"
    assert parse_store_uri("file://localhost/abs/x").path == Path("/abs/x")


def test_parse_s3_forms() -> None:
    assert parse_store_uri("s3://b").prefix == ""
    assert parse_store_uri("s3://b/").prefix == ""
    p = parse_store_uri("s3://bucket/a/b/")
    assert (p.scheme, p.bucket, p.prefix) == ("s3", "bucket", "a/b")


@pytest.mark.parametrize(
    "uri",
    ["", "s3://", "s3:///x", "s3://b/a/../c", "gs://b/x", "file://host/x", "s3://b/a?x=1"],
)
def test_bad_uris(uri: str) -> None:
    with pytest.raises(StoreError):
        parse_store_uri(uri)


@pytest.mark.parametrize("key", ["", "/", "a/../b", "..", "./a", "a//b", "a\\b", "a\x00b"])
def test_bad_keys(key: str) -> None:
    with pytest.raises(StoreError):
        normalize_key(key)


def test_key_helpers() -> None:
    assert normalize_key("/a/b/") == "a/b"
    assert normalize_prefix("") == "" and normalize_prefix("/x/") == "x"
    assert join_key("", "a/", "/b", "") == "a/b"


def test_open_store_types(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(open_store(str(tmp_path)), LocalStore)
    assert open_store(tmp_path.as_uri()).uri == tmp_path.resolve().as_uri()
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:1")
    s = open_store("s3://bucket/p/q")
    assert isinstance(s, S3Store) and s.uri == "s3://bucket/p/q"
    assert s.url("x/y") == "s3://bucket/p/q/x/y"
    assert s.child("c").uri == "s3://bucket/p/q/c"
