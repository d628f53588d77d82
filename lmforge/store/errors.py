"""Exceptions raised by the artifact store.

They all derive from :class:`StoreError` so that a CLI or the operator can catch one type and print
its one-line message: user mistakes (missing bucket, bad credentials, wrong endpoint) must read as a
sentence naming the URI, not as a botocore traceback.
"""

from __future__ import annotations

__all__ = ["ArtifactCorrupt", "ArtifactIncomplete", "ArtifactNotFound", "StoreError"]


class StoreError(Exception):
    """Any failure of the store; the message names the URI involved."""


class ArtifactNotFound(StoreError):
    """The requested key (or artifact) does not exist."""


class ArtifactIncomplete(StoreError):
    """An artifact prefix has no MANIFEST.json: it is absent, still being written, or its writer died."""


class ArtifactCorrupt(StoreError):
    """An artifact's content does not match its manifest (wrong hash or size, missing file, bad manifest)."""
