"""SHA-256 computed on the bytes as they stream through a transfer, instead of a second read pass.

Artifact manifests carry every file's SHA-256, so each upload and each verified download hashes the
whole file. Done as a separate pass that costs a full extra read (~0.1 s per 200 MB here) after the
transfer; done on the stream it overlaps the network: s3transfer reads a non-seekable source in order
while its worker threads send the parts, and writes to a non-seekable target in order from its I/O
thread while the ranged GETs run. `hashlib` releases the GIL for buffers over 2 KiB, so the hashing
thread and the transfer threads really run at the same time.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import IO, Protocol

__all__ = ["CHUNK", "HashingReader", "HashingWriter", "Readable", "sha256_file"]

CHUNK = 4 * 1024 * 1024
"""Bytes per read when hashing or copying local files (bounded memory for multi-GB checkpoints)."""


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a local file, read in chunks so multi-GB checkpoints do not fill memory."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


class Readable(Protocol):
    """What an upload reads from: a file, or a pipe fed by another thread (one that returns exactly
    ``n`` bytes per read until the end)."""

    def read(self, n: int = -1, /) -> bytes: ...


class HashingReader:
    """A read-only, deliberately non-seekable view of a file that hashes what is read through it.

    Non-seekable makes s3transfer read it strictly in order (so the hash is of the file as uploaded)
    while still uploading the parts concurrently.
    """

    def __init__(self, f: Readable) -> None:
        self._f = f
        self._hash = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self._hash.update(data)
        self.size += len(data)
        return data

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


class HashingWriter:
    """A write-only, non-seekable file target that hashes what is written (s3transfer then writes the
    downloaded ranges in order from one I/O thread, buffering early ones)."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self._hash.update(data)
        self.size += len(data)
        return self._f.write(data)

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def hexdigest(self) -> str:
        return self._hash.hexdigest()
