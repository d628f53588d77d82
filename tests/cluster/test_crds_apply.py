"""The generated CRDs in crds/ install on a real API server and document themselves.

Why: structural-schema rules, size limits of client-side ``kubectl apply`` (the
last-applied-configuration annotation) and OpenAPI publication are only checked by a real
kube-apiserver; ``kubectl explain`` is how users discover the fields, so every spec field must
carry its description all the way through.
"""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from .controlplane import ControlPlane, eventually

REPO = Path(__file__).resolve().parents[2]
CRD_DIR = REPO / "crds"


def load_crds() -> list[dict[str, Any]]:
    """Every CustomResourceDefinition document under crds/."""
    docs = []
    for path in sorted(CRD_DIR.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "CustomResourceDefinition":
                docs.append(doc)
    return docs


CRDS = load_crds()


def words(text: str) -> str:
    """Whitespace-normalised text, since kubectl explain re-wraps descriptions."""
    return " ".join(text.split())


@pytest.fixture(scope="module")
def applied_crds(control_plane: ControlPlane) -> list[dict[str, Any]]:
    """``kubectl apply -f crds/`` exactly as a user would, then wait for every CRD Established."""
    assert CRDS, f"no CustomResourceDefinitions found in {CRD_DIR}"
    control_plane.kubectl("apply", "-f", str(CRD_DIR))

    def established(name: str) -> bool:
        _, body = control_plane.request("GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
        conditions = body.get("status", {}).get("conditions", []) if isinstance(body, dict) else []
        return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)

    for crd in CRDS:
        name = crd["metadata"]["name"]
        eventually(functools.partial(established, name), timeout=60, what=f"CRD {name} Established")
    return CRDS


@pytest.mark.parametrize("crd", CRDS, ids=[c["metadata"]["name"] for c in CRDS])
def test_crd_is_established_and_explained(
    control_plane: ControlPlane, applied_crds: list[dict[str, Any]], crd: dict[str, Any]
) -> None:
    names = crd["spec"]["names"]
    version = next(v for v in crd["spec"]["versions"] if v.get("storage"))
    spec_schema = version["schema"]["openAPIV3Schema"]["properties"]["spec"]

    def explain() -> str | None:
        # The OpenAPI v3 document for a new CRD is published shortly after Established.
        try:
            return control_plane.kubectl("explain", f"{names['plural']}.spec").stdout
        except subprocess.CalledProcessError:
            return None

    out = eventually(explain, timeout=60, what=f"kubectl explain {names['plural']}.spec")
    text = words(out)
    assert f"KIND: {names['kind']}" in text, out
    assert f"VERSION: {version['name']}" in text, out
    assert words(spec_schema["description"]) in text, out
    for field, schema in spec_schema.get("properties", {}).items():
        assert field in out, f"{field} missing from kubectl explain:\n{out}"
        description = words(schema.get("description", ""))
        assert description, f"{names['kind']}.spec.{field} has no description"
        # explain shows each field's description (first sentence is enough to identify it).
        assert description[:40] in text, f"description of {field!r} missing:\n{out}"

    # The resource is served: listing it works (empty) through kubectl as well.
    # (Other tests' namespaces may still hold some, so only the listing itself is checked.)
    listed = control_plane.kubectl_json("get", names["plural"], "--all-namespaces")
    assert listed["kind"] == "List" and isinstance(listed["items"], list)
