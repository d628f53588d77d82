"""Fixtures for the store tests: the same contract runs against a local directory and real S3."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.seaweed import SeaweedServer

from lmforge.store import LocalStore, Store, open_store


@pytest.fixture
def s3_env(s3_server: SeaweedServer, monkeypatch: pytest.MonkeyPatch) -> SeaweedServer:
    """Point lmforge's S3 client at the test server through the environment, for one test."""
    s3_server.apply_env(monkeypatch)
    return s3_server


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A fresh, empty store: a temp directory, or a unique prefix in the session's S3 bucket."""
    if request.param == "local":
        yield LocalStore(tmp_path / "store")
        return
    server: SeaweedServer = request.getfixturevalue("s3_env")
    s = open_store(f"s3://{server.bucket}/{request.node.name.replace('[', '-').rstrip(']')}-{uuid.uuid4().hex[:8]}")
    yield s
    s.delete_prefix("")
