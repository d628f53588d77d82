"""Artifacts: a prefix of files made visible all at once by a ``MANIFEST.json`` written last.

Object stores have no multi-object transactions, so completeness is a convention: readers treat a
prefix as an artifact only once its manifest exists, and the manifest lists every file with its size
and SHA-256. A writer that dies half-way therefore leaves something readers ignore, and a consumer
can verify what it downloaded end to end (bit rot, truncated copies, a wrong file put in place).
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lmforge.store.base import TMP_MARKER, Store
from lmforge.store.errors import ArtifactCorrupt, ArtifactIncomplete, ArtifactNotFound, StoreError
from lmforge.store.hashing import sha256_file
from lmforge.store.local import LocalStore
from lmforge.store.uri import join_key, normalize_key

__all__ = [
    "MANIFEST_NAME",
    "SCHEMA_VERSION",
    "ArtifactManifest",
    "ArtifactWriter",
    "FileEntry",
    "download_artifact",
    "is_complete",
    "read_manifest",
    "sha256_file",
]

MANIFEST_NAME = "MANIFEST.json"
SCHEMA_VERSION = 1


class FileEntry(BaseModel):
    """Size and content hash of one file of an artifact."""

    model_config = ConfigDict(frozen=True)

    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class ArtifactManifest(BaseModel):
    """Contents of ``MANIFEST.json``; unknown fields are ignored so older readers accept newer writers."""

    model_config = ConfigDict(extra="ignore")

    schema_version: int = SCHEMA_VERSION
    kind: str
    created: datetime
    files: dict[str, FileEntry]
    total_size: int = Field(ge=0)
    metadata: dict[str, Any] = Field(default_factory=dict)


class ArtifactWriter:
    """Uploads files under ``prefix`` and publishes them with :meth:`commit`.

    Creating a writer immediately deletes any existing manifest at ``prefix``: from then on readers
    see the artifact as incomplete until the new manifest is written, so a republish is never mixed
    with the previous version. Files of the previous version that are not re-added stay as unlisted
    garbage unless ``clear_existing=True`` deletes the whole prefix first.
    """

    def __init__(self, store: Store, prefix: str, clear_existing: bool = False) -> None:
        self.store = store.child(prefix) if prefix.strip("/") else store
        self.uri = self.store.uri
        self._files: dict[str, FileEntry] = {}
        self._earlier: set[str] = set()  # rel names of add_uploaded, checked to be there at commit
        self._committed = False
        if clear_existing:
            self.store.delete_prefix("")
        else:
            self.store.delete_prefix(MANIFEST_NAME)

    def _check_rel(self, rel: str) -> str:
        if self._committed:
            raise StoreError(f"artifact {self.uri} is already committed; start a new ArtifactWriter")
        rel = normalize_key(rel)
        if rel == MANIFEST_NAME:
            raise StoreError(f"{MANIFEST_NAME} is reserved for the manifest of {self.uri}")
        return rel

    def add_file(self, rel: str, path: Path) -> FileEntry:
        """Upload a local file as ``rel``; it is hashed as it is read for the upload, so the manifest
        describes exactly the bytes sent."""
        rel = self._check_rel(rel)
        path = Path(path)
        if not path.is_file():
            raise StoreError(f"cannot add {path} to {self.uri}: not a file")
        size, digest = self.store.put_file_hashed(rel, path)
        entry = FileEntry(size=size, sha256=digest)
        self._files[rel] = entry
        return entry

    def add_bytes(self, rel: str, data: bytes) -> FileEntry:
        """Upload in-memory content (configs, small JSON) as ``rel``."""
        rel = self._check_rel(rel)
        entry = FileEntry(size=len(data), sha256=hashlib.sha256(data).hexdigest())
        self.store.put_bytes(rel, data)
        self._files[rel] = entry
        return entry

    def add_uploaded(self, rel: str, entry: FileEntry) -> FileEntry:
        """List a file uploaded earlier under the prefix by a writer that resumes file by file (the
        Dataset's shards) and recorded its size and hash then; ``commit`` checks it is there."""
        rel = self._check_rel(rel)
        self._files[rel] = entry
        self._earlier.add(rel)
        return entry

    def add_dir(self, local_dir: Path, rel_prefix: str = "", workers: int = 1) -> list[str]:
        """Upload every regular file below ``local_dir`` under ``rel_prefix``, in sorted key order, or
        ``workers`` files at a time (one file's reading and hashing then overlaps another's transfer;
        the first failure is raised once every started upload has ended).

        Temporary files of interrupted local writes are skipped, and so is a ``MANIFEST.json`` at the
        top of ``local_dir`` (re-publishing a downloaded artifact must not upload its old manifest).
        """
        local_dir = Path(local_dir)
        if not local_dir.is_dir():
            raise StoreError(f"cannot add {local_dir} to {self.uri}: not a directory")
        found: list[tuple[str, Path]] = []
        for dirpath, _dirnames, filenames in os.walk(local_dir):
            for name in filenames:
                path = Path(dirpath) / name
                rel_local = path.relative_to(local_dir).as_posix()
                if TMP_MARKER in name or not path.is_file():
                    continue
                if rel_local == MANIFEST_NAME and not rel_prefix.strip("/"):
                    continue
                found.append((join_key(rel_prefix, rel_local), path))
        found.sort()
        if workers <= 1:
            for rel, path in found:
                self.add_file(rel, path)
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                for job in [pool.submit(self.add_file, rel, path) for rel, path in found]:
                    job.result()
        return [rel for rel, _ in found]

    @property
    def files(self) -> dict[str, FileEntry]:
        """Files added so far (a copy)."""
        return dict(self._files)

    def commit(self, kind: str, metadata: dict[str, Any] | None = None) -> ArtifactManifest:
        """Write ``MANIFEST.json`` last, making the artifact visible as complete."""
        if self._committed:
            raise StoreError(f"artifact {self.uri} is already committed")
        files = dict(sorted(self._files.items()))
        present = self.store.sizes("") if self._earlier else {}
        wrong = [rel for rel in sorted(self._earlier) if present.get(rel) != files[rel].size]
        if wrong:
            raise ArtifactIncomplete(f"artifact {self.uri}: {', '.join(wrong[:3])} missing or of another size")
        manifest = ArtifactManifest(
            schema_version=SCHEMA_VERSION,
            kind=kind,
            created=datetime.now(UTC),
            files=files,
            total_size=sum(e.size for e in files.values()),
            metadata=dict(metadata or {}),
        )
        self.store.put_bytes(MANIFEST_NAME, manifest.model_dump_json(indent=2).encode() + b"\n")
        self._committed = True
        return manifest


def _at(store: Store, prefix: str) -> Store:
    return store.child(prefix) if prefix.strip("/") else store


def _parse_manifest(data: bytes, where: str) -> ArtifactManifest:
    try:
        manifest = ArtifactManifest.model_validate_json(data)
    except ValidationError as e:
        first = e.errors()[0] if e.errors() else {"msg": str(e), "loc": ()}
        loc = ".".join(str(x) for x in first.get("loc", ()))
        raise ArtifactCorrupt(f"invalid {MANIFEST_NAME} at {where}: {loc}: {first.get('msg')}") from None
    if manifest.schema_version > SCHEMA_VERSION:
        raise StoreError(
            f"{MANIFEST_NAME} at {where} has schema version {manifest.schema_version}; this lmforge reads "
            f"up to {SCHEMA_VERSION} -- upgrade lmforge"
        )
    for rel in manifest.files:
        try:
            if normalize_key(rel) != rel or rel == MANIFEST_NAME:
                raise StoreError(rel)
        except StoreError:
            raise ArtifactCorrupt(f"invalid {MANIFEST_NAME} at {where}: bad file name {rel!r}") from None
    return manifest


def read_manifest(store: Store, prefix: str) -> ArtifactManifest | None:
    """The artifact's manifest, or ``None`` if it is absent or not yet committed.

    Raises :class:`ArtifactCorrupt` if a manifest exists but cannot be parsed (it is written
    atomically, so that means damage, not a writer in progress).
    """
    at = _at(store, prefix)
    try:
        data = at.get_bytes(MANIFEST_NAME)
    except ArtifactNotFound:
        return None
    return _parse_manifest(data, at.url(MANIFEST_NAME))


def is_complete(store: Store, prefix: str) -> bool:
    """Whether the manifest exists and every file it lists exists with the listed size.

    One listing plus one manifest read; content hashes are not checked (that needs a download, see
    :func:`download_artifact`).
    """
    manifest = read_manifest(store, prefix)
    if manifest is None:
        return False
    present = _at(store, prefix).sizes("")
    return all(present.get(rel) == entry.size for rel, entry in manifest.files.items())


_DOWNLOAD_WORKERS = 4


def _download_file(src: Store, rel: str, entry: FileEntry, dest: Path, verify: bool) -> None:
    """One file of :func:`download_artifact`: skipped if already there intact, else fetched (hashed as
    it streams in when verifying) and checked against the manifest."""
    if dest.is_file() and dest.stat().st_size == entry.size and sha256_file(dest) == entry.sha256:
        return
    try:
        if not verify:
            src.get_file(rel, dest)
            return
        size, digest = src.get_file_hashed(rel, dest)  # no second read of the file
    except ArtifactNotFound:
        raise ArtifactCorrupt(
            f"artifact {src.uri} is damaged: {rel} is listed in {MANIFEST_NAME} but missing"
        ) from None
    if size != entry.size or digest != entry.sha256:
        dest.unlink(missing_ok=True)
        raise ArtifactCorrupt(
            f"artifact {src.uri} is corrupt: {rel} has size {size} and sha256 {digest[:12]}..., "
            f"manifest says size {entry.size} and sha256 {entry.sha256[:12]}..."
        )


def download_artifact(store: Store, prefix: str, dest_dir: Path, verify: bool = True) -> ArtifactManifest:
    """Download a complete artifact into ``dest_dir`` and return its manifest.

    Files already in ``dest_dir`` with the right size and hash are kept (a cache: re-running after an
    interruption only fetches what is missing). With ``verify`` every downloaded file is hashed and a
    mismatch raises :class:`ArtifactCorrupt` naming the file (the bad copy is removed). The manifest
    is written into ``dest_dir`` last, so ``dest_dir`` is itself a complete local artifact.
    """
    src = _at(store, prefix)
    manifest = read_manifest(store, prefix)
    if manifest is None:
        raise ArtifactIncomplete(f"artifact {src.uri} is incomplete or absent: no {MANIFEST_NAME}")
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    # Files download concurrently: one file's hashing and disk writes overlap another's transfer.
    with ThreadPoolExecutor(max_workers=_DOWNLOAD_WORKERS) as pool:
        jobs = [
            pool.submit(_download_file, src, rel, entry, dest_dir / rel, verify)
            for rel, entry in manifest.files.items()
        ]
        for job in jobs:
            job.result()  # the first failure in manifest order, after every transfer has ended
    LocalStore(dest_dir).put_bytes(MANIFEST_NAME, manifest.model_dump_json(indent=2).encode() + b"\n")
    return manifest
