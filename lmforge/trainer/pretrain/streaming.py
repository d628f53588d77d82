"""DeepSpeed checkpoint files serialised straight into store uploads, with no local file in between.

DeepSpeed writes a checkpoint through its pluggable checkpoint engine (`engine.checkpoint_engine`,
whose `save(state_dict, path)` is a torch.save). Writing the files to local disk and only then
uploading them costs the serialisation time on top of the transfer. :class:`StreamingCheckpointEngine`
replaces that save for the duration of one checkpoint: torch.save writes into a bounded in-memory
:class:`ChunkPipe`, and a thread uploads the other end as a multipart upload (hashed on the way, see
`Store.put_stream_hashed`). So the model file's upload overlaps the optimizer file's serialisation,
and the serialisation of each file overlaps its own upload.

Failures never break DeepSpeed's collective save: a failed upload turns the rest of that file's writes
into no-ops, and is reported by :meth:`StreamingCheckpointEngine.finish`; the caller then falls back
to a local save plus retried upload. Nothing here writes a manifest: the caller commits only after
every upload has finished and succeeded.
"""

from __future__ import annotations

import collections
import queue
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any, cast

from lmforge.store import FileEntry, Store
from lmforge.store.errors import StoreError

__all__ = ["ChunkPipe", "StreamingCheckpointEngine"]

CHUNK = 8 * 1024 * 1024
"""Bytes per queued chunk (torch.save hands over whole tensor storages; they are split and copied)."""
QUEUED_CHUNKS = 8
"""Chunks held at most between serialisation and upload: 64 MiB of memory per file in flight."""
_POLL_S = 0.05
"""How often a blocked side re-checks whether the other one gave up (a wait, not a correctness sleep)."""


class ChunkPipe:
    """A bounded, thread-safe byte pipe: torch.save `write`s into one end, the uploader `read`s the
    other. Reads return exactly `n` bytes until end of stream, as s3transfer's non-seekable upload
    needs (a short read would end the upload early)."""

    def __init__(self) -> None:
        self._q: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=QUEUED_CHUNKS)
        self._parts: collections.deque[bytes] = collections.deque()  # received, not yet read
        self._have = 0  # bytes in _parts
        self._eof = False
        self._aborted = threading.Event()  # the reader gave up: writes are discarded

    # -- writer side (torch.save's thread) ----------------------------------------------------------

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        n = view.nbytes
        for i in range(0, n, CHUNK):
            self._put(bytes(view[i : i + CHUNK]))  # a copy: torch may reuse the buffer after returning
        return n

    def flush(self) -> None:
        pass

    def close(self, error: BaseException | None = None) -> None:
        """End of stream (or, with `error`, a failed serialisation the reader raises)."""
        self._put(error)

    def _put(self, item: bytes | BaseException | None) -> None:
        while not self._aborted.is_set():
            try:
                self._q.put(item, timeout=_POLL_S)
                return
            except queue.Full:
                continue

    # -- reader side (the upload thread) ------------------------------------------------------------

    def read(self, n: int = -1) -> bytes:
        while not self._eof and (n < 0 or self._have < n):
            item = self._q.get()
            if item is None:
                self._eof = True
            elif isinstance(item, BaseException):
                raise StoreError(f"checkpoint serialisation failed: {item}") from item
            else:
                self._parts.append(item)
                self._have += len(item)
        size = self._have if n < 0 else min(n, self._have)
        if self._parts and len(self._parts[0]) == size:  # a whole chunk: handed over without a copy
            self._have -= size
            return self._parts.popleft()
        out, got = [], 0
        while got < size:
            part = self._parts.popleft()
            if got + len(part) > size:  # split the last chunk; its tail stays for the next read
                self._parts.appendleft(part[size - got :])
                part = part[: size - got]
            out.append(part)
            got += len(part)
        self._have -= size
        return b"".join(out)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def abort(self) -> None:
        """The upload failed: unblock and discard the writer's remaining output."""
        self._aborted.set()
        while True:  # free a writer blocked on a full queue
            try:
                self._q.get_nowait()
            except queue.Empty:
                return


class StreamingCheckpointEngine:
    """Stands in for DeepSpeed's checkpoint engine during one save: files below `local_dir` are
    serialised into uploads to `store` (keys relative to `local_dir`); everything else (loading,
    makedirs, commit...) goes to the engine it wraps."""

    def __init__(self, inner: Any, store: Store, local_dir: Path, workers: int) -> None:
        self.inner = inner
        self.store = store
        self.local_dir = local_dir
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lmforge-ckpt-upload")
        self._uploads: dict[str, Future[tuple[int, str]]] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def save(self, state_dict: Any, path: str) -> None:
        import torch

        rel = Path(path).resolve().relative_to(self.local_dir.resolve()).as_posix()
        pipe = ChunkPipe()
        self._uploads[rel] = self._pool.submit(self._upload, rel, pipe)
        try:
            torch.save(
                state_dict,
                cast("IO[bytes]", pipe),
                _use_new_zipfile_serialization=getattr(self.inner, "zipfile_serialization", True),
            )
        except BaseException as exc:
            pipe.close(exc)
            raise
        pipe.close()

    def _upload(self, rel: str, pipe: ChunkPipe) -> tuple[int, str]:
        try:
            return self.store.put_stream_hashed(rel, pipe)
        except BaseException:
            pipe.abort()
            raise

    def finish(self) -> dict[str, FileEntry] | None:
        """Wait for every upload; the manifest entries of the streamed files, or None if any failed."""
        entries: dict[str, FileEntry] | None = {}
        for rel, job in self._uploads.items():
            try:
                size, digest = job.result()
            except Exception as exc:  # any failure means: fall back
                print(
                    f"lmforge: warning: streamed checkpoint upload of {rel} failed: {exc}", file=sys.stderr, flush=True
                )
                entries = None
                continue
            if entries is not None:
                entries[rel] = FileEntry(size=size, sha256=digest)
        self._pool.shutdown(wait=True)
        return entries
