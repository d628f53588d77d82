"""docs/api.md, generated from the models: every kind, every object type and every field with its
wire name, type, default, bounds and the docstring written under it.

Like the CRDs, the reference is an output of the models, never edited by hand: `lmforge crds` writes
it beside them and `lmforge crds --check` fails when it has drifted.
"""

from __future__ import annotations

import types
import typing
from enum import Enum
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from lmforge.api.kinds import KINDS, ORDER
from lmforge.api.meta import API_VERSION, Status

_BOUNDS = (
    ("gt", ">"),
    ("ge", "≥"),
    ("lt", "<"),
    ("le", "≤"),
    ("min_length", "min length"),
    ("max_length", "max length"),
    ("pattern", "pattern"),
    ("multiple_of", "multiple of"),
)


def _args(annotation: Any) -> tuple[Any, ...]:
    return typing.get_args(annotation)


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def _nested(annotation: Any) -> list[type]:
    """Model and enum classes an annotation mentions (through Optional, list, dict, Literal-free)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel | Enum):
        return [annotation]
    return [t for arg in _args(annotation) for t in _nested(arg)]


def _type(annotation: Any) -> str:
    """A short, linked type name: `int`, `[Optimizer](#optimizer)`, `list[string]`, `map[string]float`."""
    if annotation is type(None):
        return "null"
    if _is_union(annotation):
        return " or ".join(_type(a) for a in _args(annotation) if a is not type(None))
    origin = typing.get_origin(annotation)
    if origin is list:
        return f"list[{_type(_args(annotation)[0])}]"
    if origin is dict:
        key, value = _args(annotation)
        return f"map[{_type(key)}]{_type(value)}"
    if origin is typing.Literal:
        return " or ".join(f"`{a}`" for a in _args(annotation))
    if isinstance(annotation, type) and issubclass(annotation, BaseModel | Enum):
        return f"[{annotation.__name__}](#{annotation.__name__.lower()})"
    return {str: "string", int: "integer", float: "number", bool: "boolean"}.get(annotation, "object")


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "**required**"
    value = field.get_default(call_default_factory=True, validated_data={})
    if value is None:
        return "—"
    if isinstance(value, Enum):
        return f"`{value.value}`"
    if isinstance(value, BaseModel):
        return "defaults"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if value in ([], {}):
        return "empty"
    if isinstance(value, list):
        return "`[" + ", ".join(str(v.value if isinstance(v, Enum) else v) for v in value) + "]`"
    if field.default_factory is not None and isinstance(value, str):
        return "generated"  # e.g. a timestamp: now
    return f"`{value}`"


def _bounds(field: FieldInfo) -> str:
    found = []
    for meta in field.metadata:
        for attr, label in _BOUNDS:
            value = getattr(meta, attr, None)
            if value is not None:
                found.append(f"{label} `{value}`" if attr == "pattern" else f"{label} {value}")
    return ", ".join(found)


def _cell(text: str | None) -> str:
    return " ".join((text or "").split()).replace("|", "\\|")


def _model_section(model: type[BaseModel]) -> list[str]:
    lines = [f"### {model.__name__}", "", _cell(model.__doc__), ""]
    lines += ["| Field | Type | Default | Bounds | Description |", "| --- | --- | --- | --- | --- |"]
    for name, field in model.model_fields.items():
        wire = field.alias or name
        lines.append(
            f"| `{wire}` | {_type(field.annotation)} | {_default(field)} | {_bounds(field)} | "
            f"{_cell(field.description)} |"
        )
    rules = model.__dict__.get("rules", ())
    if rules:
        lines += ["", "Rules (checked by the model and, as CEL, by the API server at apply):", ""]
        lines += [f"- {r.message}" + (f" (`{r.field}`)" if r.field else "") for r in rules]
    return [*lines, ""]


def _enum_section(enum: type[Enum]) -> list[str]:
    doc = _cell(enum.__doc__) if enum.__doc__ and enum.__doc__ != Enum.__doc__ else ""
    values = ", ".join(f"`{m.value}`" for m in enum)
    return [f"### {enum.__name__}", "", *([doc, ""] if doc else []), f"One of: {values}.", ""]


def _sections(root: type[BaseModel], seen: set[type]) -> list[str]:
    """The root's section, then each type it uses, depth first, each type once in the document."""
    out: list[str] = []
    stack: list[type] = [root]
    while stack:
        cls = stack.pop(0)
        if cls in seen:
            continue
        seen.add(cls)
        if issubclass(cls, Enum):
            out += _enum_section(cls)
            continue
        assert issubclass(cls, BaseModel)
        out += _model_section(cls)
        for field in cls.model_fields.values():
            stack += [t for t in _nested(field.annotation) if t not in seen]
    return out


def _spec_model(kind: str) -> type[BaseModel]:
    spec: Any = KINDS[kind].model.model_fields["spec"].annotation
    if not (isinstance(spec, type) and issubclass(spec, BaseModel)):
        raise TypeError(f"{kind}.spec is not a model")
    return spec


def api_reference() -> str:
    """The whole of docs/api.md."""
    lines = [
        "# API reference",
        "",
        "<!-- Generated from lmforge/api by `lmforge crds`; do not edit. `lmforge crds --check` fails on drift. -->",
        "",
        f"Every kind is `apiVersion: {API_VERSION}`, namespaced, with a `status` subresource written by",
        "LMForge. Fields are camelCase on the wire; unknown fields are rejected. The same models generate the",
        "CRDs in `crds/`, so `kubectl explain <kind>.spec` shows these descriptions too.",
        "",
        "## Kinds",
        "",
        "| Kind | Short names | Spec |",
        "| --- | --- | --- |",
    ]
    for kind in ORDER:
        info = KINDS[kind]
        spec = _spec_model(kind)
        lines.append(
            f"| {kind} | {', '.join(info.short_names)} | [{spec.__name__}](#{spec.__name__.lower()}) — "
            f"{_cell(info.description)} |"
        )
    lines.append("")
    seen: set[type] = set()
    for kind in ORDER:
        lines += [f"## {kind}", "", _cell(KINDS[kind].model.__doc__), ""]
        lines += _sections(_spec_model(kind), seen)
    lines += ["## Status", "", "Shared by every kind.", ""]
    lines += _sections(Status, seen)
    return "\n".join(lines).rstrip("\n") + "\n"
