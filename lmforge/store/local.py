"""A store backed by a local (or network-mounted) directory.

Used for single-machine runs, tests and as the on-disk layout of downloaded artifacts. Every write
goes to a temporary file in the destination directory followed by ``os.replace``, which is atomic on
POSIX filesystems, so a crash never leaves a truncated object under its final name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from lmforge.store.base import TMP_MARKER, Store
from lmforge.store.errors import ArtifactNotFound, StoreError
from lmforge.store.hashing import CHUNK, HashingReader

__all__ = ["LocalStore", "atomic_write_path"]


@contextlib.contextmanager
def atomic_write_path(dest: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``dest``; on success fsync it and rename it over ``dest``.

    The temporary file lives in the same directory so the rename never crosses filesystems, and its
    name carries :data:`TMP_MARKER` so listings ignore it if the process dies before the rename.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}{TMP_MARKER}{uuid.uuid4().hex[:12]}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _copy_hashed(src: Path, dest: Path) -> tuple[int, str]:
    """Copy `src` to `dest`, returning (size, hex SHA-256) from the same single read."""
    with open(src, "rb") as fin, open(dest, "wb") as fout:
        reader = HashingReader(fin)
        shutil.copyfileobj(reader, fout, CHUNK)
    return reader.size, reader.hexdigest()


class LocalStore(Store):
    """Objects are plain files below :attr:`root`; keys map one-to-one onto relative paths."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).expanduser().resolve()
        self.uri = self.root.as_uri()

    def _path(self, key: str) -> Path:
        return self.root / self._key(key)

    def put_bytes(self, key: str, data: bytes) -> None:
        dest = self._path(key)
        try:
            with atomic_write_path(dest) as tmp:
                tmp.write_bytes(data)
        except OSError as e:
            raise StoreError(f"cannot write {self.url(key)}: {e.strerror or e}") from e

    def get_bytes(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ArtifactNotFound(f"not found: {self.url(key)}") from None
        except OSError as e:
            raise StoreError(f"cannot read {self.url(key)}: {e.strerror or e}") from e

    def put_file(self, key: str, path: Path) -> None:
        dest = self._path(key)
        try:
            with atomic_write_path(dest) as tmp:
                shutil.copyfile(path, tmp)
        except FileNotFoundError:
            raise StoreError(f"cannot upload {path} to {self.url(key)}: local file not found") from None
        except OSError as e:
            raise StoreError(f"cannot write {self.url(key)}: {e.strerror or e}") from e

    def get_file(self, key: str, path: Path) -> None:
        src = self._path(key)
        if not src.is_file():
            raise ArtifactNotFound(f"not found: {self.url(key)}")
        try:
            with atomic_write_path(Path(path)) as tmp:
                shutil.copyfile(src, tmp)
        except FileNotFoundError:
            raise ArtifactNotFound(f"not found: {self.url(key)}") from None
        except OSError as e:
            raise StoreError(f"cannot download {self.url(key)} to {path}: {e.strerror or e}") from e

    def put_file_hashed(self, key: str, path: Path) -> tuple[int, str]:
        dest = self._path(key)
        try:
            with atomic_write_path(dest) as tmp:
                result = _copy_hashed(Path(path), tmp)
        except FileNotFoundError:
            raise StoreError(f"cannot upload {path} to {self.url(key)}: local file not found") from None
        except OSError as e:
            raise StoreError(f"cannot write {self.url(key)}: {e.strerror or e}") from e
        return result

    def get_file_hashed(self, key: str, path: Path) -> tuple[int, str]:
        src = self._path(key)
        if not src.is_file():
            raise ArtifactNotFound(f"not found: {self.url(key)}")
        try:
            with atomic_write_path(Path(path)) as tmp:
                result = _copy_hashed(src, tmp)
        except FileNotFoundError:
            raise ArtifactNotFound(f"not found: {self.url(key)}") from None
        except OSError as e:
            raise StoreError(f"cannot download {self.url(key)} to {path}: {e.strerror or e}") from e
        return result

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def _walk(self, prefix: str) -> Iterator[tuple[str, Path]]:
        """Yield ``(key, path)`` for every committed file under ``prefix`` (temp files skipped)."""
        prefix = self._prefix(prefix)
        base = self.root / prefix if prefix else self.root
        if base.is_file():
            if TMP_MARKER not in base.name:
                yield prefix, base
            return
        for dirpath, _dirnames, filenames in os.walk(base):
            for name in filenames:
                if TMP_MARKER in name:
                    continue
                full = Path(dirpath) / name
                yield full.relative_to(self.root).as_posix(), full

    def sizes(self, prefix: str = "") -> dict[str, int]:
        out: dict[str, int] = {}
        for key, path in self._walk(prefix):
            with contextlib.suppress(FileNotFoundError):  # deleted concurrently
                out[key] = path.stat().st_size
        return out

    def delete_prefix(self, prefix: str) -> int:
        prefix = self._prefix(prefix)
        count = sum(1 for _ in self._walk(prefix))
        target = self.root / prefix if prefix else self.root
        try:
            if target.is_file() or target.is_symlink():
                target.unlink()
            elif target.is_dir():
                if prefix:
                    shutil.rmtree(target)
                else:  # keep the root itself: the store still exists, only empty
                    for entry in target.iterdir():
                        if entry.is_dir() and not entry.is_symlink():
                            shutil.rmtree(entry)
                        else:
                            entry.unlink()
        except FileNotFoundError:
            pass
        except OSError as e:
            raise StoreError(f"cannot delete {self.url(prefix) if prefix else self.uri}: {e.strerror or e}") from e
        return count

    def child(self, prefix: str) -> LocalStore:
        prefix = self._prefix(prefix)
        return LocalStore(self.root / prefix) if prefix else LocalStore(self.root)

    def url(self, key: str) -> str:
        key = self._prefix(key)
        return (self.root / key).as_uri() if key else self.uri
