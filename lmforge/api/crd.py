"""CustomResourceDefinitions generated from the pydantic models, so the models stay the only schema.

The pydantic JSON Schema is turned into a *structural* OpenAPI v3 schema as Kubernetes requires:
references inlined, `Optional` unions collapsed to the inner type, every node typed, JSON Schema
2020 keywords mapped to their OpenAPI v3.0 forms, and free-form objects marked with
`x-kubernetes-preserve-unknown-fields`.
"""

from __future__ import annotations

import copy
from typing import Any

from lmforge.api.kinds import KINDS, KindInfo
from lmforge.api.meta import GROUP, VERSION, Status

CATEGORY = "lmforge"

_DROP = {"title", "discriminator"}


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    """Inline `$ref`s, keeping sibling keywords (a field's description wins over its type's)."""
    if isinstance(node, list):
        return [_resolve(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        name = node["$ref"].split("/")[-1]
        target = _resolve(copy.deepcopy(defs[name]), defs)
        siblings = {k: _resolve(v, defs) for k, v in node.items() if k != "$ref"}
        return {**target, **siblings}
    if "allOf" in node and len(node["allOf"]) == 1:
        inner = _resolve(node["allOf"][0], defs)
        rest = {k: _resolve(v, defs) for k, v in node.items() if k != "allOf"}
        return {**inner, **rest}
    return {k: _resolve(v, defs) for k, v in node.items()}


def _scalar_choices(options: list[dict[str, Any]]) -> list[Any] | None:
    """The allowed values of a union of a boolean and string constants (none of them null), or None
    for any other union."""
    values: list[Any] = []
    for option in options:
        if option == {"type": "boolean"}:
            values += [True, False]
        elif option.get("type") == "string" and ("const" in option or "enum" in option):
            values += [option["const"]] if "const" in option else list(option["enum"])
        else:
            return None
    return values if len(options) > 1 else None


def _structural(node: dict[str, Any]) -> dict[str, Any]:
    """Map one resolved JSON Schema node to a structural OpenAPI v3 node."""
    node = dict(node)
    for key in _DROP:
        node.pop(key, None)
    if "anyOf" in node and _scalar_choices(node["anyOf"]) is not None:
        # e.g. `bool | Literal["auto"]`: a structural schema has one type per node, so the node takes
        # any value (no type) and its enum lists the allowed ones, which the API server enforces.
        choices = _scalar_choices(node.pop("anyOf"))
        node = {**node, "enum": choices, "x-kubernetes-preserve-unknown-fields": True}
    if "anyOf" in node:
        options = [o for o in node.pop("anyOf") if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"unions other than Optional are not structural: {options}")
        inner = _structural(options[0])
        if node.get("default", "missing") is None:
            node.pop("default")
        # The field's own description and default win over the inner type's.
        node = {**inner, **{k: v for k, v in node.items() if k != "anyOf"}}
    if "const" in node:
        node["enum"] = [node.pop("const")]
    if "exclusiveMinimum" in node and not isinstance(node["exclusiveMinimum"], bool):
        node["minimum"] = node.pop("exclusiveMinimum")
        node["exclusiveMinimum"] = True
    if "exclusiveMaximum" in node and not isinstance(node["exclusiveMaximum"], bool):
        node["maximum"] = node.pop("exclusiveMaximum")
        node["exclusiveMaximum"] = True
    if "properties" in node:
        node["type"] = "object"
        node["properties"] = {k: _structural(v) for k, v in node["properties"].items()}
        extra = node.pop("additionalProperties", None)
        if extra is True or (extra is None and not node["properties"]):
            node["x-kubernetes-preserve-unknown-fields"] = True
    elif node.get("type") == "object":
        extra = node.get("additionalProperties", True)
        if extra is True or extra == {}:
            node.pop("additionalProperties", None)
            node["x-kubernetes-preserve-unknown-fields"] = True
        else:
            node["additionalProperties"] = _structural(extra)
    if node.get("type") == "array" and "items" in node:
        node["items"] = _structural(node["items"])
    if "type" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
        if "enum" in node:
            node["type"] = "string"
        else:
            raise ValueError(f"schema node has no type: {node}")
    if node.get("type") == "object" and not node.get("required"):
        node.pop("required", None)
    return node


def openapi_schema(model: type[Any]) -> dict[str, Any]:
    """Structural OpenAPI v3 schema of a pydantic model (wire names)."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    return _structural(_resolve(raw, defs))


def resource_schema(info: KindInfo) -> dict[str, Any]:
    """The `openAPIV3Schema` of a kind: apiVersion/kind/metadata left to Kubernetes, spec and status
    from the models."""
    full = openapi_schema(info.model)
    spec = full["properties"]["spec"]
    status = openapi_schema(Status)
    status["description"] = "Observed state, written by LMForge (the operator or the embedded runner)."
    return {
        "type": "object",
        "description": info.model.__doc__.strip() if info.model.__doc__ else info.description,
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "lmforge.io/v1alpha1"},
            "kind": {"type": "string", "description": info.kind},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }


def crd(info: KindInfo) -> dict[str, Any]:
    """The CustomResourceDefinition object of a kind."""
    columns = [
        {
            k: v
            for k, v in {
                "name": c.name,
                "type": c.type,
                "jsonPath": c.json_path,
                "description": c.description or None,
                "priority": c.priority or None,
            }.items()
            if v is not None
        }
        for c in info.columns
    ]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{info.plural}.{GROUP}",
            "labels": {"app.kubernetes.io/part-of": "lmforge", "app.kubernetes.io/managed-by": "lmforge-crds"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": info.kind,
                "listKind": f"{info.kind}List",
                "plural": info.plural,
                "singular": info.singular,
                "shortNames": list(info.short_names),
                "categories": [CATEGORY],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {"openAPIV3Schema": resource_schema(info)},
                }
            ],
        },
    }


def all_crds() -> dict[str, dict[str, Any]]:
    """File name → CRD object, for every kind."""
    return {f"{GROUP}_{info.plural}.yaml": crd(info) for info in KINDS.values()}
