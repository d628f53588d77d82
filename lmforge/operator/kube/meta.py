"""Names, labels, owner references and content hashes shared by every child object."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from lmforge.api.meta import API_VERSION

GROUP_PREFIX = "lmforge.io"
RUN_LABEL = "lmforge.io/run"
"""Label on every child of a stage run: the run name (also the Job/Deployment name)."""
COMPONENT_LABEL = "lmforge.io/component"
"""`stage` for Jobs and their pods, `serve` for serving pods (the stable Service selects these)."""
SPEC_HASH = "lmforge.io/spec-hash"
"""Annotation: hash of what the builder produced, so an unchanged child is never re-applied."""
MANAGED_BY = "lmforge-operator"
FIELD_MANAGER = "lmforge-operator"
"""Server-side apply field manager."""


@dataclass(frozen=True)
class Owner:
    """The LMForge resource that owns the children (ownerReference target)."""

    kind: str
    name: str
    namespace: str
    uid: str
    labels: tuple[tuple[str, str], ...] = ()
    """The owner's own labels, copied onto the children (the API docs promise this)."""

    @property
    def kind_label(self) -> str:
        """`lmforge.io/<kind>` with the kind in lower case, e.g. `lmforge.io/pretrainjob`."""
        return f"{GROUP_PREFIX}/{self.kind.lower()}"

    def reference(self) -> dict[str, Any]:
        """The ownerReference: controller=True so `kubectl get` shows who made it, and
        blockOwnerDeletion so foreground deletion waits for the children."""
        return {
            "apiVersion": API_VERSION,
            "kind": self.kind,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


def labels(owner: Owner, run: str | None, component: str) -> dict[str, str]:
    """Labels of a child: the owner's, the recommended app.kubernetes.io set, and ours."""
    out = {k: v for k, v in owner.labels if not k.startswith(GROUP_PREFIX + "/")}
    out.update(
        {
            "app.kubernetes.io/name": "lmforge",
            "app.kubernetes.io/instance": owner.name,
            "app.kubernetes.io/component": component,
            "app.kubernetes.io/managed-by": MANAGED_BY,
            "app.kubernetes.io/part-of": "lmforge",
            owner.kind_label: owner.name,
            COMPONENT_LABEL: component,
        }
    )
    if run is not None:
        out[RUN_LABEL] = run
    return out


def content_hash(obj: Any) -> str:
    """A short stable hash of a JSON-able object."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def metadata(owner: Owner, name: str, run: str | None, component: str) -> dict[str, Any]:
    """Object metadata of a child, without the hash annotation (added last by `stamp`)."""
    return {
        "name": name,
        "namespace": owner.namespace,
        "labels": labels(owner, run, component),
        "ownerReferences": [owner.reference()],
        "annotations": {},
    }


def stamp(obj: dict[str, Any]) -> dict[str, Any]:
    """Add the content hash annotation (computed without it) and return the object."""
    obj["metadata"]["annotations"][SPEC_HASH] = content_hash(obj)
    return obj


def owner_of(child_labels: dict[str, str]) -> tuple[str, str] | None:
    """(lower-case kind, name) of the LMForge resource a child belongs to, from its labels."""
    for key, value in child_labels.items():
        if key.startswith(GROUP_PREFIX + "/") and key not in (RUN_LABEL, COMPONENT_LABEL):
            kind = key.split("/", 1)[1]
            if kind in ("dataset", "pretrainjob", "alignmentjob", "evalsuite", "modelrelease"):
                return kind, value
    return None


def owned_by(obj: dict[str, Any], uid: str) -> bool:
    """Whether `obj` names the resource with `uid` among its owners. Why by uid, not by name or
    labels: a resource deleted and created again under the same name is another resource, and its
    predecessor's children (still being garbage-collected) must not be taken over either."""
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(ref.get("uid") == uid for ref in refs)
