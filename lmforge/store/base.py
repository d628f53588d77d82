"""The storage interface every backend implements.

Trainer, operator and CLI only ever talk to :class:`Store`, so a run can move between a laptop
directory and S3 by changing one URI. Keys are relative POSIX paths below the store root (see
:mod:`lmforge.store.uri`). Listing and deletion use *directory* semantics: prefix ``runs/a`` covers
``runs/a`` itself and ``runs/a/...`` but never ``runs/ab`` -- a plain string prefix would make
``delete_prefix("runs/a")`` silently delete a sibling run.
"""

from __future__ import annotations

import shutil
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path

from lmforge.store.errors import StoreError
from lmforge.store.hashing import CHUNK, Readable, sha256_file
from lmforge.store.uri import join_key, normalize_key, normalize_prefix

__all__ = ["TMP_MARKER", "Store", "StoreError", "under_prefix"]

#: Marker in the names of in-flight temporary files; listings skip them, so a writer killed in the
#: middle of an upload never makes a half-written object visible.
TMP_MARKER = ".lmforge-tmp-"


def under_prefix(key: str, prefix: str) -> bool:
    """Whether ``key`` is ``prefix`` itself or lies below it (directory semantics, see module doc)."""
    return prefix == "" or key == prefix or key.startswith(prefix + "/")


class Store(ABC):
    """An object store rooted at :attr:`uri`; all keys are relative to that root.

    Backends implement the abstract primitives; :meth:`list` is derived from :meth:`sizes` so that
    completeness checks cost one listing instead of one request per file.
    """

    #: Absolute URI of the root, e.g. ``file:///abs/dir`` or ``s3://bucket/prefix``.
    uri: str

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None:
        """Write an object atomically: readers see the old content or the new one, never a part."""

    @abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """Read a whole object; raises :class:`ArtifactNotFound` if absent."""

    @abstractmethod
    def put_file(self, key: str, path: Path) -> None:
        """Upload a local file, streaming (multipart on S3) so big checkpoints never sit in memory."""

    @abstractmethod
    def get_file(self, key: str, path: Path) -> None:
        """Download to ``path`` via a temporary file and a rename, so ``path`` is never half-written."""

    def put_file_hashed(self, key: str, path: Path) -> tuple[int, str]:
        """:meth:`put_file`, returning (size in bytes, hex SHA-256) of what was uploaded. Backends that
        can hash the bytes while they stream override this to save the extra read pass."""
        self.put_file(key, path)
        return Path(path).stat().st_size, sha256_file(Path(path))

    #: Whether :meth:`put_stream_hashed` sends the bytes as they are produced (S3 multipart). Where it
    #: does not, a writer gains nothing by streaming and keeps its write-a-file-then-upload path.
    streams_uploads: bool = False

    def put_stream_hashed(self, key: str, stream: Readable) -> tuple[int, str]:
        """Upload everything read from ``stream`` (until EOF) as ``key``, returning (size, hex SHA-256)
        of what was read. This default spools to a temporary file first; backends that can upload a
        stream of unknown length as it is read override it (and set :attr:`streams_uploads`)."""
        with tempfile.TemporaryDirectory(prefix="lmforge-spool-") as tmp:
            path = Path(tmp) / "data"
            with open(path, "wb") as f:
                shutil.copyfileobj(stream, f, CHUNK)
            return self.put_file_hashed(key, path)

    def get_file_hashed(self, key: str, path: Path) -> tuple[int, str]:
        """:meth:`get_file`, returning (size in bytes, hex SHA-256) of what was downloaded (see
        :meth:`put_file_hashed`)."""
        self.get_file(key, path)
        return Path(path).stat().st_size, sha256_file(Path(path))

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object exists at exactly ``key``."""

    @abstractmethod
    def sizes(self, prefix: str = "") -> dict[str, int]:
        """Sizes in bytes of all objects under ``prefix``, keyed relative to the store root."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix`` (``""`` = everything in this store); returns the count."""

    @abstractmethod
    def child(self, prefix: str) -> Store:
        """A store of the same backend rooted at ``prefix`` below this one (shares connections)."""

    @abstractmethod
    def url(self, key: str) -> str:
        """Absolute URI of ``key`` -- for messages and for handing a location to another process."""

    def list(self, prefix: str = "") -> list[str]:
        """Keys (relative to the store root) under ``prefix``, sorted."""
        return sorted(self.sizes(prefix))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"

    # Helpers shared by backends -------------------------------------------------------------------

    @staticmethod
    def _key(key: str) -> str:
        return normalize_key(key)

    @staticmethod
    def _prefix(prefix: str) -> str:
        return normalize_prefix(prefix)

    @staticmethod
    def _join(*parts: str) -> str:
        return join_key(*parts)
