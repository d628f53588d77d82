"""A store backed by an S3-compatible object store (AWS S3, SeaweedFS, MinIO, Ceph RGW...).

Endpoint and credentials come from the environment so the same image runs against any provider:
``AWS_ENDPOINT_URL_S3``, then ``AWS_ENDPOINT_URL``, then ``LMFORGE_S3_ENDPOINT`` (none = AWS);
``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``; ``AWS_REGION`` (default ``us-east-1``).
Path-style addressing is used because most self-hosted servers do not serve virtual-host buckets.
Transient failures are retried by botocore's "standard" retry mode with exponential backoff; errors
that are the user's to fix become a one-line :class:`StoreError` naming the URI.
"""

from __future__ import annotations

import contextlib
import functools
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import boto3.exceptions
import boto3.session
import botocore.exceptions
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

from lmforge.store.base import TMP_MARKER, Store
from lmforge.store.errors import ArtifactNotFound, StoreError
from lmforge.store.hashing import HashingReader, HashingWriter, Readable

__all__ = ["S3Store", "make_s3_client", "s3_endpoint_from_env"]

_MB = 1024 * 1024
#: Multipart above 16 MiB in 16 MiB parts: few requests for checkpoints, small memory per part.
TRANSFER_CONFIG = TransferConfig(multipart_threshold=16 * _MB, multipart_chunksize=16 * _MB, max_concurrency=4)

_STREAM_DOWNLOAD_CONFIG = TransferConfig(multipart_threshold=16 * _MB, multipart_chunksize=16 * _MB, max_concurrency=4)
# s3transfer 0.19 deadlocks a download to a non-seekable target with more parts than its in-memory
# window (the first part's slot is only released after every other part was scheduled), so the window
# must cover the parts: 4096 x 16 MiB = 64 GiB files. Memory stays bounded in practice by the four
# requests in flight, because the in-order writer (hashing at ~2 GB/s) outpaces the network.
_STREAM_DOWNLOAD_CONFIG.max_in_memory_download_chunks = 4096

_NOT_FOUND_CODES = {"404", "NoSuchKey", "NotFound"}
_AUTH_CODES = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "403",
}


def s3_endpoint_from_env() -> str | None:
    """The S3 endpoint URL from the environment, or ``None`` for AWS's default endpoints."""
    for var in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "LMFORGE_S3_ENDPOINT"):
        value = os.environ.get(var, "").strip()
        if value:
            return value
    return None


@functools.lru_cache(maxsize=16)
def _cached_client(
    endpoint: str | None,
    access_key: str | None,
    secret_key: str | None,
    session_token: str | None,
    region: str,
    max_attempts: int,
    connect_timeout: float,
) -> Any:
    # A botocore client is thread-safe and costs ~50 ms to build; cache it per configuration.
    session = boto3.session.Session(
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        aws_session_token=session_token,
        region_name=region,
    )
    config = Config(
        s3={"addressing_style": "path"},
        retries={"mode": "standard", "max_attempts": max_attempts},
        connect_timeout=connect_timeout,
        read_timeout=120,
        # Artifacts carry their own SHA-256; newer botocore's default CRC headers are rejected by
        # several S3-compatible servers, so only send checksums where the API requires them.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return session.client("s3", endpoint_url=endpoint, config=config)


def make_s3_client(max_attempts: int = 5, connect_timeout: float = 10.0) -> Any:
    """Build (or reuse) an S3 client configured from the environment (see module doc)."""
    env = os.environ
    return _cached_client(
        s3_endpoint_from_env(),
        env.get("AWS_ACCESS_KEY_ID") or None,
        env.get("AWS_SECRET_ACCESS_KEY") or None,
        env.get("AWS_SESSION_TOKEN") or None,
        env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
        max_attempts,
        connect_timeout,
    )


def _error_code(e: BaseException) -> str:
    if isinstance(e, botocore.exceptions.ClientError):
        return str(e.response.get("Error", {}).get("Code", ""))
    return ""


class S3Store(Store):
    """Objects live at ``s3://bucket/<prefix>/<key>``; :meth:`child` shares the same client."""

    def __init__(self, bucket: str, prefix: str = "", client: Any = None) -> None:
        self.bucket = bucket
        self.prefix = self._prefix(prefix)
        self.client = client if client is not None else make_s3_client()
        self.uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"

    # -- helpers -----------------------------------------------------------------------------------

    def _full(self, key: str) -> str:
        return self._join(self.prefix, self._key(key))

    def _rel(self, full: str) -> str:
        return full[len(self.prefix) + 1 :] if self.prefix else full

    def _endpoint(self) -> str:
        return str(getattr(self.client.meta, "endpoint_url", "") or "AWS S3")

    @contextlib.contextmanager
    def _errors(self, what: str, target: str) -> Iterator[None]:
        """Translate botocore failures into StoreError subclasses with a one-line message."""
        try:
            yield
        except StoreError:
            raise
        except botocore.exceptions.ClientError as e:
            code = _error_code(e)
            if code in _NOT_FOUND_CODES:
                raise ArtifactNotFound(f"not found: {target}") from None
            raise self._client_error(e, what, target) from None
        except boto3.exceptions.S3UploadFailedError as e:
            cause = e.__context__
            if isinstance(cause, botocore.exceptions.ClientError):
                raise self._client_error(cause, what, target) from None
            raise StoreError(f"cannot {what} {target}: {e}") from e
        except botocore.exceptions.NoCredentialsError:
            raise StoreError(
                f"cannot {what} {target}: no S3 credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
            ) from None
        except (
            botocore.exceptions.EndpointConnectionError,
            botocore.exceptions.ConnectTimeoutError,
            botocore.exceptions.ConnectionClosedError,
        ):
            raise StoreError(
                f"cannot {what} {target}: S3 endpoint {self._endpoint()} is unreachable "
                "(check AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL / LMFORGE_S3_ENDPOINT)"
            ) from None
        except botocore.exceptions.BotoCoreError as e:
            raise StoreError(f"cannot {what} {target}: {e}") from e

    def _client_error(self, e: botocore.exceptions.ClientError, what: str, target: str) -> StoreError:
        code = _error_code(e)
        if code == "NoSuchBucket":
            return StoreError(f"cannot {what} {target}: bucket {self.bucket!r} does not exist at {self._endpoint()}")
        if code in _AUTH_CODES:
            return StoreError(
                f"cannot {what} {target}: access denied by {self._endpoint()} ({code}); "
                "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the bucket policy"
            )
        msg = e.response.get("Error", {}).get("Message", "") or str(e)
        return StoreError(f"cannot {what} {target}: {code or 'error'}: {msg}")

    # -- Store API ---------------------------------------------------------------------------------

    def put_bytes(self, key: str, data: bytes) -> None:
        full = self._full(key)
        with self._errors("write", self.url(key)):
            self.client.put_object(Bucket=self.bucket, Key=full, Body=data)

    def get_bytes(self, key: str) -> bytes:
        full = self._full(key)
        with self._errors("read", self.url(key)):
            resp = self.client.get_object(Bucket=self.bucket, Key=full)
            return bytes(resp["Body"].read())

    def put_file(self, key: str, path: Path) -> None:
        full = self._full(key)
        if not Path(path).is_file():
            raise StoreError(f"cannot upload {path} to {self.url(key)}: local file not found")
        with self._errors("write", self.url(key)):
            self.client.upload_file(str(path), self.bucket, full, Config=TRANSFER_CONFIG)

    def get_file(self, key: str, path: Path) -> None:
        full = self._full(key)
        dest = Path(path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}{TMP_MARKER}{uuid.uuid4().hex[:12]}")
        try:
            with self._errors("download", self.url(key)):
                self.client.download_file(self.bucket, full, str(tmp), Config=TRANSFER_CONFIG)
            os.replace(tmp, dest)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def put_file_hashed(self, key: str, path: Path) -> tuple[int, str]:
        """Upload and hash in one read: the file is read in order (and hashed) by s3transfer's
        submission thread while its workers send the parts (see :mod:`lmforge.store.hashing`)."""
        if not Path(path).is_file():
            raise StoreError(f"cannot upload {path} to {self.url(key)}: local file not found")
        with open(path, "rb") as f:
            return self._upload_hashed(key, f)

    streams_uploads = True

    def put_stream_hashed(self, key: str, stream: Readable) -> tuple[int, str]:
        """Multipart upload of a stream of unknown length, hashed as read: s3transfer reads it in
        order, one part at a time, while its workers send earlier parts. ``stream.read(n)`` must
        return ``n`` bytes until the end (a short read ends the upload)."""
        return self._upload_hashed(key, stream)

    def _upload_hashed(self, key: str, stream: Readable) -> tuple[int, str]:
        """The upload both `put_file_hashed` and `put_stream_hashed` make: read in order and hashed."""
        with self._errors("write", self.url(key)):
            reader = HashingReader(stream)
            self.client.upload_fileobj(reader, self.bucket, self._full(key), Config=TRANSFER_CONFIG)
        return reader.size, reader.hexdigest()

    def get_file_hashed(self, key: str, path: Path) -> tuple[int, str]:
        """Download and hash in one pass: ranged GETs run concurrently, the I/O thread writes (and
        hashes) them in order, so verification needs no second read of the file."""
        full = self._full(key)
        dest = Path(path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}{TMP_MARKER}{uuid.uuid4().hex[:12]}")
        try:
            with self._errors("download", self.url(key)), open(tmp, "wb") as f:
                writer = HashingWriter(f)
                self.client.download_fileobj(self.bucket, full, writer, Config=_STREAM_DOWNLOAD_CONFIG)
            os.replace(tmp, dest)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        return writer.size, writer.hexdigest()

    def exists(self, key: str) -> bool:
        full = self._full(key)
        try:
            with self._errors("check", self.url(key)):
                self.client.head_object(Bucket=self.bucket, Key=full)
        except ArtifactNotFound:
            return False
        return True

    def _iter_objects(self, prefix: str) -> Iterator[tuple[str, int]]:
        """Yield ``(full_key, size)`` under ``prefix`` with directory semantics (see base module)."""
        rel = self._prefix(prefix)
        full = self._join(self.prefix, rel)
        # List by string prefix and filter, so the exact key ``full`` is included but ``full`` + "x" not.
        paginator = self.client.get_paginator("list_objects_v2")
        with self._errors("list", self.url(rel) if rel else self.uri):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
                for obj in page.get("Contents", []):
                    k = str(obj["Key"])
                    if TMP_MARKER in k.rsplit("/", 1)[-1]:
                        continue
                    if full and not (k == full or k.startswith(full + "/")):
                        continue
                    yield k, int(obj.get("Size", 0))

    def sizes(self, prefix: str = "") -> dict[str, int]:
        return {self._rel(k): size for k, size in self._iter_objects(prefix)}

    def delete_prefix(self, prefix: str) -> int:
        keys = [k for k, _ in self._iter_objects(prefix)]
        target = self.url(prefix) if self._prefix(prefix) else self.uri
        for i in range(0, len(keys), 1000):  # DeleteObjects accepts at most 1000 keys per call
            batch = [{"Key": k} for k in keys[i : i + 1000]]
            with self._errors("delete", target):
                resp = self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
            errors = resp.get("Errors") or []
            if errors:
                first = errors[0]
                raise StoreError(
                    f"cannot delete {target}: {len(errors)} object(s) failed, e.g. "
                    f"{first.get('Key')}: {first.get('Code')} {first.get('Message', '')}".rstrip()
                )
        return len(keys)

    def child(self, prefix: str) -> S3Store:
        return S3Store(self.bucket, self._join(self.prefix, self._prefix(prefix)), client=self.client)

    def url(self, key: str) -> str:
        rel = self._prefix(key)
        full = self._join(self.prefix, rel)
        return f"s3://{self.bucket}/{full}" if full else f"s3://{self.bucket}"
