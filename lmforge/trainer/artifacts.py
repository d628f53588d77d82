"""Fetching inputs from and publishing outputs to the artifact store, the same way for every stage.

Inputs are downloaded into a local cache keyed by their URI and verified against their manifest's
hashes, so a retried stage does not download twice and never trains on a corrupted file.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from lmforge.store import (
    ArtifactIncomplete,
    ArtifactWriter,
    LocalStore,
    download_artifact,
    open_store,
    read_manifest,
    split_uri,
)
from lmforge.trainer.context import StageContext


def cache_dir() -> Path:
    """Root of the local download cache."""
    return Path(os.environ.get("LMFORGE_CACHE", Path.home() / ".cache" / "lmforge")) / "artifacts"


def fetch(uri: str, dest: Path | None = None, *, require_manifest: bool = True) -> Path:
    """A local directory holding the artifact at `uri`, downloaded and verified if remote.

    Local artifacts are used in place (after checking they are complete). A Hugging Face directory a
    user uploaded without a manifest is accepted only with `require_manifest=False`.
    """
    root, leaf = split_uri(uri)
    store = open_store(root)
    manifest = read_manifest(store, leaf)
    if isinstance(store, LocalStore) and dest is None:
        path = Path(store.url(leaf).removeprefix("file://"))
        if manifest is None and (require_manifest or not path.is_dir()):
            raise ArtifactIncomplete(f"{uri}: no MANIFEST.json, the artifact is incomplete")
        return path
    target = dest or cache_dir() / hashlib.sha256(uri.encode()).hexdigest()[:24]
    if manifest is not None:
        download_artifact(store, leaf, target, verify=True)
        return target
    if require_manifest:
        raise ArtifactIncomplete(f"{uri}: no MANIFEST.json, the artifact is incomplete")
    keys = store.list(leaf)
    if not keys:
        raise ArtifactIncomplete(f"{uri}: nothing there")
    for key in keys:
        rel = key[len(leaf) :].lstrip("/")
        out = target / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        store.get_file(key, out)
    return target


def publish(ctx: StageContext, name: str, local_dir: Path, kind: str, metadata: dict[str, Any] | None = None) -> str:
    """Upload a local directory as the artifact `name` under the stage's output; returns its URI.

    The manifest is written last, so readers never see a half-uploaded artifact as complete.
    """
    writer = ArtifactWriter(ctx.output, name, clear_existing=True)
    writer.add_dir(local_dir)
    writer.commit(kind, metadata or {})
    return ctx.uri(name)
