"""The CRDs are generated from the models: checked-in files must match, and be structural."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from lmforge.api.crd import all_crds
from lmforge.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_checked_in_crds_match_the_models(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["crds", "--check", "--out", str(ROOT / "crds")]) == 0, (
        "crds/ drifted from lmforge/api: run `lmforge crds` and commit the result"
    )


def test_check_detects_drift(tmp_path: Path) -> None:
    assert main(["crds", "--out", str(tmp_path)]) == 0
    victim = next(tmp_path.glob("*.yaml"))
    victim.write_text(victim.read_text().replace("description:", "description: edited", 1))
    assert main(["crds", "--check", "--out", str(tmp_path)]) == 1


def _walk(node: Any, path: str, out: list[str]) -> None:
    if not isinstance(node, dict):
        return
    preserve = node.get("x-kubernetes-preserve-unknown-fields")
    if "type" not in node and not preserve:
        out.append(f"{path}: no type")
    if "properties" in node and "additionalProperties" in node:
        out.append(f"{path}: properties and additionalProperties together")
    for banned in ("$ref", "anyOf", "oneOf", "allOf", "const", "title", "$defs"):
        if banned in node:
            out.append(f"{path}: uses {banned}")
    if (
        node.get("type") == "object"
        and "properties" not in node
        and "additionalProperties" not in node
        and not preserve
        and path.split(".")[-1] != "metadata"
    ):
        out.append(f"{path}: object without properties, additionalProperties or preserve-unknown-fields")
    for name, child in node.get("properties", {}).items():
        if not child.get("description") and path.count(".") >= 1 and name not in ("apiVersion", "kind", "metadata"):
            out.append(f"{path}.{name}: no description")
        _walk(child, f"{path}.{name}", out)
    if isinstance(node.get("items"), dict):
        _walk(node["items"], f"{path}[]", out)
    if isinstance(node.get("additionalProperties"), dict):
        _walk(node["additionalProperties"], f"{path}{{}}", out)
    for key in ("required",):
        if key in node:
            missing = [r for r in node[key] if r not in node.get("properties", {})]
            if missing:
                out.append(f"{path}: required names unknown properties {missing}")


@pytest.mark.parametrize("name", sorted(all_crds()))
def test_schemas_are_structural_and_documented(name: str) -> None:
    crd = all_crds()[name]
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    assert crd["spec"]["names"]["categories"] == ["lmforge"]
    assert crd["spec"]["names"]["shortNames"]
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert {"Phase", "Progress", "Age"} <= set(columns)
    problems: list[str] = []
    _walk(version["schema"]["openAPIV3Schema"], crd["spec"]["names"]["kind"], problems)
    assert not problems, problems


def test_schema_carries_constraints_enums_and_defaults() -> None:
    crd = all_crds()["lmforge.io_pretrainjobs.yaml"]
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    zero = spec["properties"]["deepspeed"]["properties"]["zeroStage"]
    assert (zero["minimum"], zero["maximum"], zero["default"]) == (0, 3, 1)
    precision = spec["properties"]["training"]["properties"]["precision"]
    assert set(precision["enum"]) == {"bf16", "fp16", "fp32"}
    assert "datasetRef" in spec["required"]
    extra = spec["properties"]["deepspeed"]["properties"]["extraConfig"]
    assert extra["x-kubernetes-preserve-unknown-fields"] is True
    # `bool | "auto"`: no single structural type, so any value with an enum of exactly these three.
    compile_ = spec["properties"]["training"]["properties"]["compile"]
    assert compile_["enum"] == [True, False, "auto"] and compile_["default"] == "auto"
    assert compile_["x-kubernetes-preserve-unknown-fields"] is True and "type" not in compile_


def test_crd_files_are_yaml_a_user_can_apply() -> None:
    for path in (ROOT / "crds").glob("*.yaml"):
        doc = yaml.safe_load(path.read_text())
        assert doc["kind"] == "CustomResourceDefinition"
        assert doc["metadata"]["name"] == f"{doc['spec']['names']['plural']}.lmforge.io"
