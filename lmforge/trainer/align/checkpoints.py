"""Alignment's checkpoints: a Trainer's (or PPO's) local `checkpoint-<N>` directory saved and brought
back through the shared protocol of `lmforge.trainer.checkpoints`, as in pretraining — `latest` moves
only after the manifest, never backwards; a damaged latest is skipped for the newest older complete
one; the last `keepLast` are kept.
"""

from __future__ import annotations

import json
from pathlib import Path

from lmforge.store import MANIFEST_NAME, Store
from lmforge.store.errors import StoreError
from lmforge.trainer.checkpoints import PREFIX, CheckpointLog

KIND = "alignment-checkpoint"
RESTORED = "restored.json"
"""Left in the restore folder by the process that downloaded, naming what it restored, so the
node's other processes (`download=False`) use the same checkpoint after a fallback."""


class CheckpointStore:
    """Uploads local checkpoint directories and brings the newest usable one back for a resume."""

    def __init__(self, output: Store, keep_last: int, publish: bool = True) -> None:
        self.log = CheckpointLog(output, keep_last)
        self.publish = publish
        """Only rank 0 writes to the store."""

    def latest(self) -> str | None:
        """Key of the checkpoint a resume would try first, or None."""
        names = self.log.candidates()
        return f"{PREFIX}/{names[0]}" if names else None

    def restore(self, dest: Path, *, download: bool = True) -> tuple[Path, int] | None:
        """Download the newest usable checkpoint into `dest/checkpoint-<step>`; returns (dir, step) or
        None. Damaged checkpoints are skipped (with a warning); if every one is, a StoreError.

        With `download=False` only the (dir, step) the downloading process chose is returned: under
        torchrun the node's first process downloads into the shared work folder and the others wait
        for it, instead of every rank deleting and rewriting the same files at once.
        """
        if not download:
            marker = dest / RESTORED
            if not marker.is_file():
                return None
            found = json.loads(marker.read_text())
            return Path(found["dir"]), int(found["step"])
        names = self.log.candidates()
        (dest / RESTORED).unlink(missing_ok=True)
        for name in names:
            step = self.log.step_of(name)
            local = dest / f"checkpoint-{step}"
            if self.log.fetch(name, local):
                (local / MANIFEST_NAME).unlink(missing_ok=True)  # a Trainer folder, not an artifact
                dest.mkdir(parents=True, exist_ok=True)
                (dest / RESTORED).write_text(json.dumps({"dir": str(local), "step": step}))
                return local, step
        if names:
            raise StoreError(
                f"no usable checkpoint under {self.log.output.url(PREFIX)}: {', '.join(names)} are all damaged"
            )
        return None

    def save(self, local_dir: Path, step: int) -> str | None:
        """Upload `local_dir` as the checkpoint of `step`, move `latest` to it, prune old ones."""
        if not self.publish:
            return None
        writer = self.log.begin(step)
        writer.add_dir(local_dir)
        if not self.log.commit(step, KIND, writer=writer):
            return None
        return writer.uri
