"""The CRDs' CEL rules reject at `kubectl apply` what the models reject, naming the same field.

Why: before the rules existed the API server accepted such specs and the operator failed them later
with InvalidSpec. The rules are generated from the same `Rule`s the model validators enforce
(tests/api/test_rules.py checks the Python side on the very same specs, tests/support/cel_cases.py).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest
from support.cel_cases import BASES, CASES, PLURALS, CelCase, resource

from .controlplane import ControlPlane, eventually

CRD_DIR = Path(__file__).resolve().parents[2] / "crds"


@pytest.fixture(scope="module")
def crds(control_plane: ControlPlane) -> ControlPlane:
    control_plane.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_DIR))

    def established(plural: str) -> bool:
        _, body = control_plane.request(
            "GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{plural}.lmforge.io"
        )
        conditions = body.get("status", {}).get("conditions", []) if isinstance(body, dict) else []
        return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)

    for plural in PLURALS.values():
        eventually(functools.partial(established, plural), timeout=60, what=f"CRD {plural} Established")
    return control_plane


def _create(cp: ControlPlane, ns: str, obj: dict[str, Any]) -> tuple[int, Any]:
    return cp.request("POST", f"/apis/lmforge.io/v1alpha1/namespaces/{ns}/{PLURALS[obj['kind']]}", obj)


@pytest.mark.parametrize("kind", sorted(BASES))
def test_the_valid_base_specs_are_accepted(crds: ControlPlane, namespace: str, kind: str) -> None:
    status, body = _create(crds, namespace, resource(kind, BASES[kind]))
    assert status == 201, body


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_the_api_server_rejects_what_the_model_rejects(crds: ControlPlane, namespace: str, case: CelCase) -> None:
    status, body = _create(crds, namespace, case.resource())
    assert status == 422, body
    causes = body["details"]["causes"]
    assert any(c.get("field") == case.field and case.rule in c.get("message", "") for c in causes), causes


def _pretrain(compile_: object) -> dict[str, Any]:
    training: dict[str, Any] = {"maxSteps": 10}
    if compile_ is not None:
        training["compile"] = compile_
    return resource("PretrainJob", {**BASES["PretrainJob"], "training": training}, name="c")


@pytest.mark.parametrize(("value", "stored"), [(True, True), (False, False), ("auto", "auto"), (None, "auto")])
def test_training_compile_accepts_true_false_and_auto(
    crds: ControlPlane, namespace: str, value: object, stored: object
) -> None:
    """`bool | "auto"` has no single structural type: existing `true`/`false` manifests must still
    apply, `"auto"` too, and an omitted field defaults to `"auto"` in the stored object."""
    status, body = _create(crds, namespace, _pretrain(value))
    assert status == 201, body
    assert body["spec"]["training"]["compile"] == stored


@pytest.mark.parametrize("value", ["maybe", "true", 1, {"on": True}])
def test_training_compile_rejects_anything_else_naming_the_field(
    crds: ControlPlane, namespace: str, value: object
) -> None:
    status, body = _create(crds, namespace, _pretrain(value))
    assert status == 422, body
    causes = body["details"]["causes"]
    assert any(c.get("field") == "spec.training.compile" for c in causes), causes
