"""Artifact store: one interface over local directories and S3, plus manifest-committed artifacts.

Everything the trainer produces (datasets, checkpoints, models, eval reports) goes through here, so
the layering rule is strict: this package imports only the stdlib, boto3/botocore and pydantic --
never torch, numpy or kopf -- and the operator can inspect artifacts without the ML stack.
"""

from __future__ import annotations

from lmforge.store.artifact import (
    MANIFEST_NAME,
    ArtifactManifest,
    ArtifactWriter,
    FileEntry,
    download_artifact,
    is_complete,
    read_manifest,
)
from lmforge.store.base import Store
from lmforge.store.errors import ArtifactCorrupt, ArtifactIncomplete, ArtifactNotFound, StoreError
from lmforge.store.local import LocalStore
from lmforge.store.s3 import S3Store
from lmforge.store.uri import parse_store_uri, split_uri

__all__ = [
    "MANIFEST_NAME",
    "ArtifactCorrupt",
    "ArtifactIncomplete",
    "ArtifactManifest",
    "ArtifactNotFound",
    "ArtifactWriter",
    "FileEntry",
    "LocalStore",
    "S3Store",
    "Store",
    "StoreError",
    "download_artifact",
    "is_complete",
    "open_store",
    "read_manifest",
    "split_uri",
]


def open_store(uri: str) -> Store:
    """Open ``file:///abs/dir``, a plain local path or ``s3://bucket/prefix`` as a :class:`Store`.

    S3 endpoint and credentials come from the environment (see :mod:`lmforge.store.s3`).
    """
    parsed = parse_store_uri(uri)
    if parsed.scheme == "s3":
        assert parsed.bucket is not None
        return S3Store(parsed.bucket, parsed.prefix)
    assert parsed.path is not None
    return LocalStore(parsed.path)
