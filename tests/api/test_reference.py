"""docs/api.md is generated from the models, like the CRDs, and checked for drift the same way."""

from __future__ import annotations

from pathlib import Path

from lmforge.api.kinds import KINDS
from lmforge.api.reference import api_reference
from lmforge.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_checked_in_api_reference_matches_the_models() -> None:
    assert main(["crds", "--check", "--out", str(ROOT / "crds"), "--docs", str(ROOT / "docs/api.md")]) == 0, (
        "docs/api.md drifted from lmforge/api: run `lmforge crds` and commit the result"
    )


def test_check_detects_drift(tmp_path: Path) -> None:
    doc = tmp_path / "api.md"
    assert main(["crds", "--out", str(tmp_path / "crds"), "--docs", str(doc)]) == 0
    assert main(["crds", "--check", "--out", str(tmp_path / "crds"), "--docs", str(doc)]) == 0
    doc.write_text(doc.read_text().replace("Tokens per packed training sequence.", "edited", 1))
    assert main(["crds", "--check", "--out", str(tmp_path / "crds"), "--docs", str(doc)]) == 1


def test_every_field_of_every_spec_is_documented_under_its_wire_name() -> None:
    text = api_reference()
    for info in KINDS.values():
        assert f"## {info.kind}\n" in text
        spec = info.model.model_fields["spec"].annotation
        assert isinstance(spec, type)
        for name, field in spec.model_fields.items():  # type: ignore[attr-defined]
            assert field.description, f"{spec.__name__}.{name} has no docstring"
            assert f"| `{field.alias or name}` |" in text
    assert "| `seqLength` | integer | `2048` | ≥ 8, ≤ 1048576 | Tokens per packed training sequence. |" in text
