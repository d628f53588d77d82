"""Each cross-field rule is declared once (`Rule`, beside its validator) and reaches the CRD as CEL;
here the Python side: every rule has a sample spec that breaks it, the model rejects that spec naming
the field, and the valid base specs pass. tests/cluster/test_crd_validation.py sends the same specs
to a real API server."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError
from support.cel_cases import BASES, CASES, CelCase, resource

from lmforge.api.crd import all_crds
from lmforge.api.kinds import KINDS
from lmforge.api.meta import ApiModel, Rule


def _models() -> set[type[BaseModel]]:
    found: set[type[BaseModel]] = set()
    stack: list[type] = [k.model for k in KINDS.values()]
    while stack:
        cls = stack.pop()
        if cls in found or not (isinstance(cls, type) and issubclass(cls, BaseModel)):
            continue
        found.add(cls)
        for field in cls.model_fields.values():
            stack += _types(field.annotation)
    return found


def _types(annotation: object) -> list[type]:
    import typing

    if isinstance(annotation, type):
        return [annotation]
    return [t for a in typing.get_args(annotation) for t in _types(a)]


def _rules() -> dict[str, tuple[type[ApiModel], Rule]]:
    return {r.message: (m, r) for m in _models() if issubclass(m, ApiModel) for r in m.__dict__.get("rules", ())}


def test_every_rule_has_a_sample_that_breaks_it() -> None:
    covered = {c.rule for c in CASES}
    assert set(_rules()) == covered, "add a CelCase to tests/support/cel_cases.py for each new Rule"


@pytest.mark.parametrize("kind", sorted(BASES))
def test_the_base_specs_are_valid(kind: str) -> None:
    KINDS[kind].model.model_validate(resource(kind, BASES[kind]))


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_the_model_rejects_the_sample_naming_the_field(case: CelCase) -> None:
    with pytest.raises((ValidationError, ValueError)) as info:
        KINDS[case.kind].model.model_validate(case.resource())
    message = str(info.value)
    leaf = case.field.rsplit(".", 1)[-1].split("[")[0]
    assert leaf in message or case.rule in message, (case.field, message)
    if isinstance(info.value, ValidationError):  # the error sits on the field's object or above it
        loc = ".".join(str(x) for x in info.value.errors()[0]["loc"])
        assert case.field.replace("[", ".").replace("]", "").startswith(loc), (loc, case.field)


def test_each_rule_is_in_its_crd_with_its_field_path() -> None:
    text = "\n".join(str(c) for c in all_crds().values())
    for message, (_, rule) in _rules().items():
        assert rule.cel in text and message in text
        assert not rule.field or f"'.{rule.field}'" in text
