"""S3Store specifics against a real SeaweedFS: multipart, endpoint env, and user-facing errors."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from support.seaweed import SeaweedServer

from lmforge.store import S3Store, StoreError, open_store
from lmforge.store.s3 import make_s3_client, s3_endpoint_from_env

pytestmark = pytest.mark.s3


def test_big_file_multipart_round_trip(s3_env: SeaweedServer, tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(20 * 1024 * 1024 + 123))
    store = open_store(f"s3://{s3_env.bucket}/big-{os.getpid()}")
    try:
        store.put_file("ckpt/big.bin", src)
        head = s3_env.client().head_object(Bucket=s3_env.bucket, Key=f"big-{os.getpid()}/ckpt/big.bin")
        assert "-" in head["ETag"], "expected a multipart upload (ETag of the form md5-N)"
        dest = tmp_path / "back.bin"
        store.get_file("ckpt/big.bin", dest)
        assert hashlib.sha256(dest.read_bytes()).digest() == hashlib.sha256(src.read_bytes()).digest()
        assert store.sizes("ckpt") == {"ckpt/big.bin": src.stat().st_size}
    finally:
        store.delete_prefix("")


def test_missing_bucket_is_one_line_store_error(s3_env: SeaweedServer, tmp_path: Path) -> None:
    uri = "s3://no-such-bucket-lmforge/some/prefix"
    store = open_store(uri)
    for op in (
        lambda: store.put_bytes("k", b"v"),
        lambda: store.get_bytes("k"),
        lambda: store.list(""),
    ):
        with pytest.raises(StoreError) as info:
            op()
        msg = str(info.value)
        assert uri in msg and "no-such-bucket-lmforge" in msg and "\n" not in msg
        assert info.value.__cause__ is None and info.value.__suppress_context__
    src = tmp_path / "f"
    src.write_bytes(b"x")
    with pytest.raises(StoreError, match="does not exist"):
        store.put_file("f", src)


def test_wrong_credentials(s3_env: SeaweedServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    uri = f"s3://{s3_env.bucket}/creds"
    with pytest.raises(StoreError, match="access denied") as info:
        open_store(uri).put_bytes("k", b"v")
    assert uri in str(info.value)


def test_unreachable_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")  # discard port: nothing listens
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    store = S3Store("bucket", "p", client=make_s3_client(max_attempts=1, connect_timeout=1))
    with pytest.raises(StoreError, match=r"unreachable") as info:
        store.get_bytes("k")
    assert "s3://bucket/p/k" in str(info.value) and "127.0.0.1:9" in str(info.value)


def test_endpoint_env_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "LMFORGE_S3_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    assert s3_endpoint_from_env() is None
    monkeypatch.setenv("LMFORGE_S3_ENDPOINT", "http://c")
    assert s3_endpoint_from_env() == "http://c"
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://b")
    assert s3_endpoint_from_env() == "http://b"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://a")
    assert s3_endpoint_from_env() == "http://a"


def test_path_style_and_retry_config(s3_env: SeaweedServer) -> None:
    client = make_s3_client()
    assert client.meta.config.s3["addressing_style"] == "path"
    assert client.meta.config.retries["mode"] == "standard"
    assert client.meta.endpoint_url == s3_env.endpoint


def test_unicode_and_spaces_in_keys(s3_env: SeaweedServer) -> None:
    store = open_store(f"s3://{s3_env.bucket}/unicode")
    try:
        store.put_bytes("dir with space/файл+1.txt", b"x")
        assert store.list("dir with space") == ["dir with space/файл+1.txt"]
        assert store.get_bytes("dir with space/файл+1.txt") == b"x"
    finally:
        store.delete_prefix("")
