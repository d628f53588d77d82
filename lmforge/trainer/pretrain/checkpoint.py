"""Pretraining's checkpoints: DeepSpeed's save and load on every rank around the shared protocol of
`lmforge.trainer.checkpoints` (`checkpoints/step-<N>/` artifacts plus a `checkpoints/latest` pointer).

Order of a save, which is what makes a crash at any point harmless:
1. on a store that streams uploads (S3), every rank serialises its DeepSpeed files straight into
   multipart uploads, so serialisation and transfer overlap (`streaming.py`); if any of those uploads
   fails, or on a local store, DeepSpeed writes the files into a local directory instead;
2. each node's local rank 0 uploads what is in that node's local directory (RNG states, DeepSpeed's
   recovery script, extra files, or everything after a fallback), retried with backoff;
3. rank 0 writes the artifact's MANIFEST.json (the union of all ranks' files), only if all uploads
   succeeded — before that the prefix is ignored by every reader;
4. rank 0 replaces `latest` (a single small object, atomic on every store), never with an older step;
5. checkpoints older than the last K are deleted (never newer ones).
With `checkpoint.async` (`background.py`), step 1 becomes a copy of the state to host memory on the
training thread, and steps 1–5 run on a background thread while training continues: each rank streams
its own files, then records what it uploaded under `checkpoints/.pending/step-<N>/rank-<R>.json`;
rank 0's thread waits for every rank's record and only then commits (3–5), so `latest` never names a
checkpoint whose upload is not complete. At most one save is in flight: the next save, the final one
and the one on SIGTERM first wait for it (:meth:`Checkpoints.finish`). A store that keeps refusing is
handled as in a synchronous save (a warning; `latest` keeps naming the previous checkpoint); any other
error of the background save fails the stage at that wait, on every rank.
A resume reads `latest`, downloads and verifies that checkpoint, and lets DeepSpeed restore model,
optimizer and LR scheduler — every file loaded weights-only (`lmforge.trainer.safe_load`: a file
that would need pickle to run code is refused, so store write access is not code execution); the data position and step come back in the client state. If that
checkpoint is damaged (files missing or not matching the manifest's sizes and SHA-256, no manifest,
an unreadable pointer), it warns and falls back to the newest older complete one among the last K —
losing N more steps beats failing every retry — and `latest` only moves again on the next save.
"""

from __future__ import annotations

import json
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.store import ArtifactWriter, FileEntry, Store
from lmforge.store.errors import StoreError
from lmforge.trainer import safe_load
from lmforge.trainer.checkpoints import LATEST_KEY, PREFIX, CheckpointLog, tag, warn
from lmforge.trainer.errors import StageError
from lmforge.trainer.pretrain.background import BackgroundJob, HostStager, SnapshotEngine
from lmforge.trainer.pretrain.dist import World, barrier, broadcast, gather
from lmforge.trainer.safe_load import weights_only_loads

__all__ = ["LATEST_KEY", "PREFIX", "Checkpoints", "tag"]

KIND = "pretrain-checkpoint"
UPLOAD_ATTEMPTS = 4
UPLOAD_BACKOFF_S = 2.0
"""Upload retries of one checkpoint (on top of botocore's own per-request retries): waits of 2, 4, 8 s."""
UPLOAD_WORKERS = 4
"""Files uploaded at once: sequential uploads left the server idle while each file was read and hashed."""
PENDING = f"{PREFIX}/.pending"
"""Where each rank of a background save records the files it uploaded (outside every `step-<N>/`)."""
PENDING_TIMEOUT_S = 3600.0
"""How long rank 0's background save waits for the other ranks' records before giving up the save."""
_PENDING_POLL_S = 0.2


@dataclass(frozen=True)
class Outcome:
    """How one rank's background save ended."""

    committed: bool = False
    """Rank 0: `latest` names it now."""
    error: str | None = None
    """An error that is not the store refusing (a bug, a serialisation failure): fails the stage."""


def host_copy_fits(snapshot_bytes: float, processes: int, available_bytes: float) -> bool:
    """Whether the host can hold one more copy of every local process's checkpoint state for an
    asynchronous save: at most half of the memory available now, so training and the page cache
    keep the rest (on the CPU the training state itself is already counted as used)."""
    return snapshot_bytes * processes <= 0.5 * available_bytes


def _rng_state() -> dict[str, Any]:
    import numpy as np
    import torch

    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def _set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np
    import torch

    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


class Checkpoints:
    """Save/resume of one job's checkpoints under its (retry-stable) output prefix."""

    def __init__(
        self,
        output: Store,
        local_root: Path,
        world: World,
        keep_last: int,
        *,
        attempts: int | None = None,
        backoff_s: float | None = None,
        asynchronous: bool = False,
    ) -> None:
        self.output = output
        self.local_root = local_root
        self.world = world
        self.keep_last = keep_last
        self.attempts = attempts or UPLOAD_ATTEMPTS
        self.backoff_s = UPLOAD_BACKOFF_S if backoff_s is None else backoff_s
        self.log = CheckpointLog(output, keep_last)
        """The store side: pointer, verification, fallback, keep-K (shared with alignment)."""
        self.asynchronous = asynchronous
        """Save in the background (`checkpoint.async`): see :meth:`save`."""
        self.last_committed: int | None = None
        """The newest step this process saved and `latest` named (None before the first)."""
        self._stager = HostStager()
        self._pending: tuple[int, BackgroundJob[Outcome]] | None = None

    # -- reading ------------------------------------------------------------------------------------

    def latest(self) -> dict[str, Any] | None:
        """The `latest` pointer, or None when this job has no complete checkpoint."""
        return self.log.pointer()

    def candidates(self) -> list[str]:
        """Checkpoints to try, best first (see `CheckpointLog.candidates`)."""
        return self.log.candidates()

    def resume(self, engine: Any) -> dict[str, Any] | None:
        """Restore the newest usable checkpoint into `engine` (collective); returns its client state
        (with `resumed_from` and `skipped`, the damaged checkpoints passed over) or None."""
        names = broadcast(self.candidates() if self.world.is_main else [], self.world)
        skipped: list[str] = []
        for name in names:
            if self._fetch(name):
                state = self._restore(engine, name)
                state["skipped"] = skipped
                return state
            skipped.append(name)
        if names:
            raise StoreError(
                f"no usable checkpoint under {self.output.url(PREFIX)}: {', '.join(names)} are all damaged"
            )
        return None

    def _fetch(self, name: str) -> bool:
        """Download and verify checkpoint `name` on every node (collective); False if any node found
        it damaged."""
        ok = self.log.fetch(name, self.local_root / name) if self.world.is_node_main else True
        if all(gather(ok, self.world)):
            return True
        if self.world.is_main:
            warn(f"checkpoint {name} cannot be restored; falling back to an older checkpoint")
        return False

    def _restore(self, engine: Any, name: str) -> dict[str, Any]:
        local = self.local_root / name
        with weights_only_loads(f"checkpoint {name}"):  # DeepSpeed asks torch.load for pickle itself
            _, client_state = engine.load_checkpoint(
                str(self.local_root), tag=name, load_optimizer_states=True, load_lr_scheduler_states=True
            )
        if client_state is None:
            raise StoreError(f"DeepSpeed could not load checkpoint {name}")
        rng = local / f"rng-rank{self.world.rank}.pt"
        if rng.is_file():
            _set_rng_state(safe_load.load(rng))
        barrier(self.world)
        if self.world.is_node_main:
            shutil.rmtree(local, ignore_errors=True)
        return dict(client_state)

    # -- writing ------------------------------------------------------------------------------------

    def save(
        self, engine: Any, step: int, client_state: dict[str, Any], files: dict[str, bytes], *, wait: bool = True
    ) -> bool:
        """Save a checkpoint (collective). True once `latest` points at it; False when the upload kept
        failing (training may continue; `latest` still names the previous complete checkpoint).

        Asynchronously, the previous save is waited for first (at most one in flight), the state is
        copied to host memory and written in the background; with `wait=False` this returns False at
        once and :meth:`finish` (or the next save) tells how it ended."""
        if not self.asynchronous:
            committed = self._save_now(engine, step, client_state, files)
            if committed:
                self.last_committed = step
            return committed
        self.finish()
        self._start(engine, step, client_state, files)
        return self.finish() if wait else False

    def finish(self) -> bool:
        """Wait for the background save in flight, if any (collective): True if it was committed.
        Raises a StageError on every rank if it failed on any rank for a reason other than the store
        refusing — a checkpoint that silently never lands would only be noticed at the next crash."""
        if self._pending is None:
            return False
        step, job = self._pending
        self._pending = None
        try:
            outcome = job.result()
        except BaseException as exc:  # _write catches everything; this is a bug in it
            outcome = Outcome(error=f"{type(exc).__name__}: {exc}")
        errors = gather(outcome.error, self.world)
        committed = broadcast(outcome.committed, self.world)
        failed = [(rank, e) for rank, e in enumerate(errors) if e is not None]
        if failed:
            rank, error = failed[0]
            raise StageError(
                f"the background save of checkpoint {tag(step)} failed on rank {rank}: {error}; "
                "`latest` still names the previous checkpoint (checkpoint.async: false saves "
                "synchronously)",
                retryable=False,
            )
        if committed:
            self.last_committed = step
        return committed

    def _start(self, engine: Any, step: int, client_state: dict[str, Any], files: dict[str, bytes]) -> None:
        """The training thread's part of a background save (collective): leftovers cleared, DeepSpeed's
        files captured as host copies, the small local files written; then the thread starts."""
        import torch

        name = tag(step)
        local = self.local_root / name
        if self.world.is_node_main:
            shutil.rmtree(local, ignore_errors=True)
        barrier(self.world)
        if self.world.is_main:
            self.output.delete_prefix(f"{PREFIX}/{name}")  # leftovers of a crashed attempt
            self.output.delete_prefix(f"{PENDING}/{name}")
        barrier(self.world)
        snapshot = SnapshotEngine(engine.checkpoint_engine, local, self._stager)
        self._stager.begin()
        engine.checkpoint_engine = snapshot
        try:
            engine.save_checkpoint(str(self.local_root), tag=name, client_state=client_state, save_latest=False)
        finally:
            engine.checkpoint_engine = snapshot.inner
            self._stager.end()
        torch.save(_rng_state(), local / f"rng-rank{self.world.rank}.pt")
        if self.world.is_main:
            for rel, data in files.items():
                (local / rel).write_bytes(data)
        barrier(self.world)  # every rank's small files are there before a node's rank 0 lists them
        small = (
            sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
            if self.world.is_node_main
            else []
        )
        job = BackgroundJob(
            f"lmforge-ckpt-{name}", lambda: self._write(name, step, snapshot.inner, snapshot.files, local, small)
        )
        self._pending = (step, job)

    def _write(
        self, name: str, step: int, inner: Any, captured: dict[str, Any], local: Path, small: list[str]
    ) -> Outcome:
        """The background thread of one rank: upload, record, and on rank 0 commit. Never raises."""
        try:
            entries = self._upload_captured(name, inner, captured, local, small)
            if not self.world.is_main:
                record = (
                    {"files": {k: e.model_dump() for k, e in entries.items()}}
                    if entries is not None
                    else {"failed": True}
                )
                self.output.put_bytes(f"{PENDING}/{name}/rank-{self.world.rank}.json", json.dumps(record).encode())
                return Outcome()
            merged = self._collect(name, entries)
            committed = merged is not None and self._commit(name, step, merged)
            self.output.delete_prefix(f"{PENDING}/{name}")
            return Outcome(committed=committed)
        except Exception as exc:
            if not self.world.is_main:  # rank 0 must not wait for this rank's record until it times out
                try:
                    self.output.put_bytes(f"{PENDING}/{name}/rank-{self.world.rank}.json", b'{"failed": true}')
                except StoreError:
                    pass
            return Outcome(error=f"{type(exc).__name__}: {exc}")
        finally:
            captured.clear()  # the host copies are not needed any more (their buffers stay cached)
            if self.world.is_node_main:
                shutil.rmtree(local, ignore_errors=True)

    def _upload_captured(
        self, name: str, inner: Any, captured: dict[str, Any], local: Path, small: list[str]
    ) -> dict[str, FileEntry] | None:
        """This rank's host copies serialised into uploads, plus (node rank 0) the `small` local files;
        retried with backoff from the same copies; None if the store kept refusing. Files are written
        exactly as the synchronous save writes them: streamed into uploads where the store streams,
        else by DeepSpeed's own engine into local files first."""
        from lmforge.trainer.pretrain.streaming import StreamingCheckpointEngine

        for attempt in range(self.attempts):
            entries: dict[str, FileEntry] | None = {}
            writer = ArtifactWriter(self.output, f"{PREFIX}/{name}")
            try:
                if self.output.streams_uploads:
                    streaming = StreamingCheckpointEngine(
                        inner, self.output.child(f"{PREFIX}/{name}"), local, workers=UPLOAD_WORKERS
                    )
                    try:
                        for rel, state in captured.items():
                            streaming.save(state, str(local / rel))
                    finally:
                        entries = streaming.finish()
                else:
                    for rel, state in captured.items():
                        if not (local / rel).is_file():  # written once; a retry only uploads again
                            (local / rel).parent.mkdir(parents=True, exist_ok=True)
                            inner.save(state, str(local / rel))
                        writer.add_file(rel, local / rel)
                if entries is not None and self.world.is_node_main:
                    for rel in small:
                        writer.add_file(rel, local / rel)
            except StoreError as exc:
                print(f"lmforge: checkpoint {name}: upload failed: {exc}", file=sys.stderr, flush=True)
                entries = None
            if entries is not None:
                return {**entries, **writer.files}
            wait = self.backoff_s * 2**attempt
            print(
                f"lmforge: checkpoint {name} background upload failed (attempt {attempt + 1}/{self.attempts}); "
                f"retrying in {wait:.0f}s",
                file=sys.stderr,
                flush=True,
            )
            if attempt + 1 < self.attempts:
                time.sleep(wait)  # backoff before the next try, not a wait for a condition
        return None

    def _collect(self, name: str, own: dict[str, FileEntry] | None) -> dict[str, FileEntry] | None:
        """Rank 0: every rank's uploaded files (its own, then the others' records as they appear);
        None if any rank failed or a record did not come within PENDING_TIMEOUT_S."""
        if own is None:
            return None
        merged = dict(own)
        missing = set(range(1, self.world.size))
        deadline = time.monotonic() + PENDING_TIMEOUT_S
        while missing:
            for rank in sorted(missing):
                key = f"{PENDING}/{name}/rank-{rank}.json"
                if not self.output.exists(key):
                    continue
                record = json.loads(self.output.get_bytes(key))
                if "files" not in record:
                    warn(f"checkpoint {name}: rank {rank}'s background upload failed; not committed")
                    return None
                merged.update({k: FileEntry.model_validate(e) for k, e in record["files"].items()})
                missing.discard(rank)
            if missing:
                if time.monotonic() > deadline:
                    warn(f"checkpoint {name}: no upload record from rank(s) {sorted(missing)}; not committed")
                    return None
                time.sleep(_PENDING_POLL_S)  # polling the store for the other ranks' records
        return merged

    def _save_now(self, engine: Any, step: int, client_state: dict[str, Any], files: dict[str, bytes]) -> bool:
        """The synchronous save (collective): see :meth:`save`."""
        import torch

        name = tag(step)
        local = self.local_root / name
        if self.world.is_node_main:
            shutil.rmtree(local, ignore_errors=True)
        barrier(self.world)
        if self.world.is_main:
            self.output.delete_prefix(f"{PREFIX}/{name}")  # leftovers of a crashed attempt
        barrier(self.world)
        streamed = self._save_streaming(engine, name, client_state) if self.output.streams_uploads else None
        if streamed is None:  # a local store, or a streamed upload failed somewhere: the local path
            if self.world.is_node_main:
                shutil.rmtree(local, ignore_errors=True)
            barrier(self.world)
            engine.save_checkpoint(str(self.local_root), tag=name, client_state=client_state, save_latest=False)
        torch.save(_rng_state(), local / f"rng-rank{self.world.rank}.pt")
        if self.world.is_main:
            for rel, data in files.items():
                (local / rel).write_bytes(data)
        barrier(self.world)
        entries: dict[str, FileEntry] | None = {}
        if self.world.is_node_main:
            entries = self._upload(name, local)  # whatever is local: all files, or the small ones
        uploaded = gather(entries, self.world)
        if streamed is not None:
            uploaded.append(streamed)
        committed = False
        if self.world.is_main and all(e is not None for e in uploaded):
            merged: dict[str, FileEntry] = {}
            for e in uploaded:
                merged.update(e or {})
            committed = self._commit(name, step, merged)
        barrier(self.world)
        if self.world.is_node_main:
            shutil.rmtree(local, ignore_errors=True)
        return broadcast(committed, self.world)

    def _save_streaming(self, engine: Any, name: str, client_state: dict[str, Any]) -> dict[str, FileEntry] | None:
        """DeepSpeed's save with its big files serialised straight into uploads (collective; see
        :mod:`lmforge.trainer.pretrain.streaming`). The manifest entries of all ranks' streamed files,
        or None on every rank if any rank's upload failed (nothing is committed from a partial one)."""
        from lmforge.trainer.pretrain.streaming import StreamingCheckpointEngine

        inner = engine.checkpoint_engine
        streaming = StreamingCheckpointEngine(
            inner, self.output.child(f"{PREFIX}/{name}"), self.local_root / name, workers=UPLOAD_WORKERS
        )
        engine.checkpoint_engine = streaming
        try:
            engine.save_checkpoint(str(self.local_root), tag=name, client_state=client_state, save_latest=False)
        finally:
            engine.checkpoint_engine = inner
            entries = streaming.finish()
        streamed = gather(entries, self.world)
        if not all(e is not None for e in streamed):
            if self.world.is_main:
                warn(f"checkpoint {name}: a streamed upload failed; saving locally and uploading instead")
            return None
        merged: dict[str, FileEntry] = {}
        for e in streamed:
            merged.update(e or {})
        return merged

    def _upload(self, name: str, local: Path) -> dict[str, FileEntry] | None:
        """This node's files → the store, retried with exponential backoff; None if it kept failing."""
        for attempt in range(self.attempts):
            try:
                writer = ArtifactWriter(self.output, f"{PREFIX}/{name}")
                writer.add_dir(local, workers=UPLOAD_WORKERS)
                return writer.files
            except StoreError as exc:
                wait = self.backoff_s * 2**attempt
                print(
                    f"lmforge: checkpoint {name} upload failed (attempt {attempt + 1}/{self.attempts}): "
                    f"{exc}; retrying in {wait:.0f}s",
                    file=sys.stderr,
                    flush=True,
                )
                if attempt + 1 < self.attempts:
                    time.sleep(wait)  # backoff before the next try, not a wait for a condition
        return None

    def _commit(self, name: str, step: int, files: dict[str, FileEntry]) -> bool:
        """Manifest (through ArtifactWriter, listing every rank's files), then `latest`, then pruning:
        the pointer only ever names a complete checkpoint."""
        return self.log.commit(step, KIND, files)

    def prune(self, newest: int) -> None:
        """Delete all but the last `keep_last` checkpoints (never `newest`, never a newer one)."""
        self.log.prune(newest)
