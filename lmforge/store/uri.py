"""Parsing of store URIs and validation of object keys.

Every backend shares one key grammar (relative POSIX paths, no ``.``/``..`` segments) so that an
artifact written to a local directory can be copied to S3 and back without renaming anything, and so
that a key coming from a manifest can never escape the store root when it is turned into a local path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

from lmforge.store.errors import StoreError

__all__ = ["StoreURI", "join_key", "normalize_key", "normalize_prefix", "parse_store_uri"]


@dataclass(frozen=True)
class StoreURI:
    """A parsed store location: a local directory or an S3 bucket plus key prefix."""

    scheme: Literal["file", "s3"]
    #: Absolute local directory for ``file``; ``None`` for ``s3``.
    path: Path | None = None
    #: Bucket name for ``s3``; ``None`` for ``file``.
    bucket: str | None = None
    #: Normalised key prefix inside the bucket (no leading/trailing slash; may be empty).
    prefix: str = ""


def _check_segments(value: str, what: str) -> str:
    """Reject keys that could escape the root or that different backends would treat differently."""
    if "\x00" in value:
        raise StoreError(f"invalid {what} {value!r}: contains a NUL byte")
    if "\\" in value:
        raise StoreError(f"invalid {what} {value!r}: use '/' as the separator, not '\\'")
    if value == "":
        return value
    for seg in value.split("/"):
        if seg in ("", ".", ".."):
            raise StoreError(f"invalid {what} {value!r}: empty, '.' or '..' path segment")
    return value


def normalize_prefix(prefix: str) -> str:
    """Normalise a prefix: strip surrounding slashes; the empty string means the store root."""
    return _check_segments(prefix.strip("/"), "prefix")


def normalize_key(key: str) -> str:
    """Normalise an object key; unlike a prefix, a key must name something (cannot be empty)."""
    norm = _check_segments(key.strip("/"), "key")
    if not norm:
        raise StoreError("invalid key '': an object key must not be empty")
    return norm


def join_key(*parts: str) -> str:
    """Join key fragments with '/', ignoring empty fragments (so joining with the root is a no-op)."""
    return "/".join(p.strip("/") for p in parts if p.strip("/"))


def parse_store_uri(uri: str) -> StoreURI:
    """Parse ``file:///abs/dir``, a plain local path (absolute or relative) or ``s3://bucket/prefix``.

    Relative paths are resolved against the current directory now, so the resulting store keeps
    pointing at the same place even if the process later changes directory.
    """
    if not uri:
        raise StoreError("empty store URI")
    if "://" not in uri:
        return StoreURI(scheme="file", path=Path(uri).expanduser().resolve())
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise StoreError(f"unsupported file URI {uri!r}: use file:///absolute/path (no host)")
        path = unquote(parts.path)
        if not path.startswith("/"):
            raise StoreError(f"invalid file URI {uri!r}: the path must be absolute")
        return StoreURI(scheme="file", path=Path(path).resolve())
    if scheme == "s3":
        bucket = parts.netloc
        if not bucket:
            raise StoreError(f"invalid S3 URI {uri!r}: expected s3://bucket/prefix")
        if parts.query or parts.fragment:
            raise StoreError(f"invalid S3 URI {uri!r}: query strings and fragments are not supported")
        try:
            prefix = normalize_prefix(unquote(parts.path))
        except StoreError as e:
            raise StoreError(f"invalid S3 URI {uri!r}: {e}") from None
        return StoreURI(scheme="s3", bucket=bucket, prefix=prefix)
    raise StoreError(f"unsupported store URI {uri!r}: expected file:///path, a local path or s3://bucket/prefix")


def split_uri(uri: str) -> tuple[str, str]:
    """`s3://b/p/run/model` → (`s3://b/p/run`, `model`): a store root and the key of the artifact."""
    root, _, leaf = uri.rstrip("/").rpartition("/")
    return root, leaf
