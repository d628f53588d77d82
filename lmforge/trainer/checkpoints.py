"""The checkpoint protocol every training stage uses: `checkpoints/step-<N>/` artifacts in the job's
(retry-stable) output prefix and a `checkpoints/latest` pointer.

Saving, in an order that makes a crash at any point harmless:
1. the checkpoint's files are uploaded under `checkpoints/step-<N>/` (by one writer or several);
2. its `MANIFEST.json` is written by `ArtifactWriter.commit` — before that every reader ignores it;
3. `latest` (one small JSON object, a single atomic PUT) is replaced to name it — unless it already
   names a newer step: two writers (a retried pod still running beside its successor) never move the
   pointer backwards;
4. checkpoints older than the last K are deleted; steps newer than the one just saved never are
   (they belong to the other writer).

Resuming tries the checkpoint `latest` names, then older complete ones, newest first: a damaged one
(a file missing or not matching the manifest's size and SHA-256, no manifest, an unreadable pointer)
is skipped with a warning — losing N steps beats failing every retry. Nothing here imports torch;
the stages put what they like in the directory (DeepSpeed's files, a Trainer's, a state dict).
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lmforge.store import ArtifactWriter, FileEntry, Store, download_artifact, read_manifest
from lmforge.store.errors import ArtifactNotFound, StoreError

PREFIX = "checkpoints"
LATEST_KEY = f"{PREFIX}/latest"
_STEP_DIR = re.compile(rf"^{PREFIX}/(step-(\d+))/")


def tag(step: int) -> str:
    """The directory name of a step's checkpoint."""
    return f"step-{step}"


def warn(message: str) -> None:
    """Checkpoint warnings go to stderr (stdout carries the stage's progress records)."""
    print(f"lmforge: warning: {message}", file=sys.stderr, flush=True)


class CheckpointLog:
    """The checkpoints of one job under `output`, keeping the last `keep_last`."""

    def __init__(self, output: Store, keep_last: int) -> None:
        self.output = output
        self.keep_last = keep_last

    # -- reading ------------------------------------------------------------------------------------

    def pointer(self) -> dict[str, Any] | None:
        """The `latest` pointer ({"tag", "step", "key", "time"}), or None when there is none. A plain
        text pointer (a directory name, as alignment wrote before this module) is read as its tag."""
        try:
            raw = self.output.get_bytes(LATEST_KEY)
        except ArtifactNotFound:
            return None
        text = raw.decode().strip()
        if not text.startswith("{"):
            m = re.fullmatch(r"step-(\d+)", text)
            if m is None:
                raise ValueError(f"not a checkpoint name: {text[:40]!r}")
            return {"tag": text, "step": int(m.group(1))}
        pointer: dict[str, Any] = json.loads(text)
        return pointer

    def stored(self) -> dict[int, str]:
        """Step → directory name of every checkpoint prefix in the store, complete or not."""
        return {int(m.group(2)): m.group(1) for k in self.output.list(PREFIX) if (m := _STEP_DIR.match(k))}

    def candidates(self) -> list[str]:
        """Checkpoints to try, best first: the one `latest` names, then older ones, newest first.
        Steps newer than `latest` are never complete saves of this writer (the pointer moves after
        the manifest), so they are not tried."""
        try:
            pointer = self.pointer()
        except (StoreError, ValueError) as exc:  # an unreadable pointer: fall back on the listing
            warn(f"checkpoint pointer {self.output.url(LATEST_KEY)} is unreadable ({exc})")
            pointer = {}
        if pointer is None:
            return []
        stored = self.stored()
        if not pointer:
            return [stored[s] for s in sorted(stored, reverse=True)]
        named = str(pointer.get("tag", ""))
        newest = int(pointer.get("step", max(stored, default=0)))
        return [named, *(stored[s] for s in sorted(stored, reverse=True) if s < newest)]

    def step_of(self, name: str) -> int:
        """The step a checkpoint holds, from its manifest (its directory name if it has none)."""
        manifest = read_manifest(self.output, f"{PREFIX}/{name}")
        if manifest is not None and "step" in manifest.metadata:
            return int(manifest.metadata["step"])
        return int(name.rsplit("-", 1)[1])

    def fetch(self, name: str, dest: Path) -> bool:
        """Download checkpoint `name` into `dest`, verified against its manifest; False (with a
        warning, and nothing left in `dest`) when it is damaged."""
        shutil.rmtree(dest, ignore_errors=True)
        try:
            download_artifact(self.output, f"{PREFIX}/{name}", dest, verify=True)
        except StoreError as exc:
            shutil.rmtree(dest, ignore_errors=True)
            warn(f"checkpoint {name} is damaged and is skipped: {exc}")
            return False
        return True

    # -- writing ------------------------------------------------------------------------------------

    def begin(self, step: int) -> ArtifactWriter:
        """A writer for the checkpoint of `step`, leftovers of a crashed attempt at it deleted."""
        return ArtifactWriter(self.output, f"{PREFIX}/{tag(step)}", clear_existing=True)

    def commit(
        self, step: int, kind: str, files: dict[str, FileEntry] | None = None, writer: ArtifactWriter | None = None
    ) -> bool:
        """Manifest, then `latest`, then pruning. `files` are entries uploaded by other writers (other
        ranks); `writer` the one that uploaded here. False, with a warning, if the store refused."""
        name = tag(step)
        writer = writer or ArtifactWriter(self.output, f"{PREFIX}/{name}")
        try:
            for rel, entry in sorted((files or {}).items()):
                if rel not in writer.files:
                    writer.add_uploaded(rel, entry)
            writer.commit(kind, {"step": step})
            self._advance(name, step)
        except StoreError as exc:
            print(f"lmforge: checkpoint {name} not committed: {exc}", file=sys.stderr, flush=True)
            return False
        self.prune(step)
        return True

    def _advance(self, name: str, step: int) -> None:
        """Point `latest` at `step` unless it already names a newer one (another writer got further).
        Stores offer no compare-and-swap here, so two writers racing in the same instant can still
        interleave; the reader's fallback covers that, and each writer's next save corrects it."""
        try:
            current = self.pointer()
        except (StoreError, ValueError):
            current = None  # unreadable: replacing it can only help
        if current is not None and int(current.get("step", -1)) > step:
            warn(f"checkpoint {name}: `latest` already names step {current['step']}; leaving it")
            return
        pointer = {"tag": name, "step": step, "key": f"{PREFIX}/{name}", "time": datetime.now(UTC).isoformat()}
        self.output.put_bytes(LATEST_KEY, json.dumps(pointer).encode())

    def prune(self, newest: int) -> None:
        """Delete all but the last `keep_last` checkpoints up to `newest`; never `newest` itself, and
        never a newer step (another writer's)."""
        stored = self.stored()
        older = sorted(s for s in stored if s <= newest)
        keep = set(older[-self.keep_last :]) | {newest}
        for s in older:
            if s not in keep:
                try:
                    self.output.delete_prefix(f"{PREFIX}/{stored[s]}")
                except StoreError as exc:  # garbage left behind is harmless; the next save retries
                    print(f"lmforge: could not delete checkpoint {stored[s]}: {exc}", file=sys.stderr)
