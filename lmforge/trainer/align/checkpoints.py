"""Checkpoints in the store with an atomic `latest` pointer, as in pretraining.

Each checkpoint is an artifact `checkpoints/step-NNNNNNNN` (manifest written last); only after its
manifest is committed does `checkpoints/latest` (one object PUT, atomic on every backend) name it, so a
run killed mid-upload resumes from the previous complete checkpoint. Older checkpoints beyond
`keepLast` are deleted after the pointer moves.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from lmforge.store import ArtifactNotFound, ArtifactWriter, Store, download_artifact, read_manifest

PREFIX = "checkpoints"
LATEST = f"{PREFIX}/latest"


def _name(step: int) -> str:
    return f"step-{step:08d}"


class CheckpointStore:
    """Uploads local checkpoint directories and brings the latest one back for a resume."""

    def __init__(self, output: Store, keep_last: int, publish: bool = True) -> None:
        self.output = output
        self.keep_last = keep_last
        self.publish = publish
        """Only rank 0 writes to the store."""

    def latest(self) -> str | None:
        """Key of the latest complete checkpoint, or None."""
        try:
            name = self.output.get_bytes(LATEST).decode().strip()
        except ArtifactNotFound:
            return None
        key = f"{PREFIX}/{name}"
        return key if read_manifest(self.output, key) is not None else None

    def restore(self, dest: Path, *, download: bool = True) -> tuple[Path, int] | None:
        """Download the latest checkpoint into `dest/<name>`; returns (dir, step) or None.

        With `download=False` only the (dir, step) it would use is returned: under torchrun the
        node's first process downloads into the shared work folder and the others wait for it,
        instead of every rank deleting and rewriting the same files at once.
        """
        key = self.latest()
        if key is None:
            return None
        manifest = read_manifest(self.output, key)
        assert manifest is not None
        step = int(manifest.metadata["step"])
        local = dest / f"checkpoint-{step}"
        if download:
            if local.exists():
                shutil.rmtree(local)
            download_artifact(self.output, key, local)
            (local / "MANIFEST.json").unlink(missing_ok=True)
        return local, step

    def save(self, local_dir: Path, step: int) -> str | None:
        """Upload `local_dir` as the checkpoint of `step`, move `latest` to it, prune old ones."""
        if not self.publish:
            return None
        key = f"{PREFIX}/{_name(step)}"
        writer = ArtifactWriter(self.output, key, clear_existing=True)
        writer.add_dir(local_dir)
        writer.commit("checkpoint", {"step": step})
        self.output.put_bytes(LATEST, _name(step).encode())
        steps = sorted({k.split("/")[1] for k in self.output.list(PREFIX) if k.count("/") >= 2})
        for old in steps[: max(0, len(steps) - self.keep_last)]:
            if old != _name(step):
                self.output.delete_prefix(f"{PREFIX}/{old}")
        return key
