"""`lmforge validate`: every problem names file, resource and field; cross-resource checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmforge.api.validation import dependency_order, validate_paths
from lmforge.cli import main

ROOT = Path(__file__).resolve().parents[2]

HEAD = "apiVersion: lmforge.io/v1alpha1\n"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "m.yaml"
    path.write_text(text)
    return path


def test_examples_are_valid(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(ROOT / "examples" / "tiny")]) == 0
    assert "6 resource(s) valid" in capsys.readouterr().out
    assert main(["validate", str(ROOT / "examples" / "cluster")]) == 0


def test_problems_name_file_resource_and_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(
        tmp_path,
        HEAD + "kind: Dataset\nmetadata: {name: d}\nspec:\n  sources:\n"
        "    - {name: a, uri: a.txt}\n  seqLength: lots\n",
    )
    assert main(["validate", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path}#1: Dataset/d: spec.sources[0].license: required field is missing" in err
    assert "spec.seqLength: Input should be a valid integer" in err and "(got 'lots')" in err


def test_unknown_kind_and_api_version(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        HEAD + "kind: Model\nmetadata: {name: x}\n---\n"
        "apiVersion: lmforge.io/v2\nkind: Dataset\nmetadata: {name: y}\nspec: {}\n",
    )
    _, problems = validate_paths([path])
    text = [str(p) for p in problems]
    assert any("#1: Model/x: kind: unknown kind 'Model'" in t for t in text)
    assert any("#2: Dataset/y: apiVersion: expected 'lmforge.io/v1alpha1'" in t for t in text)


def test_dangling_reference(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        HEAD + "kind: PretrainJob\nmetadata: {name: p}\nspec: {datasetRef: {name: missing}, training: {maxSteps: 1}}\n",
    )
    _, problems = validate_paths([path])
    assert [str(p).split(": ", 1)[1] for p in problems] == [
        "PretrainJob/p: spec.datasetRef: references Dataset/missing, which is not defined in these manifests"
    ]


def test_cycle_is_reported(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        HEAD + "kind: AlignmentJob\nmetadata: {name: a}\n"
        "spec: {modelRef: {kind: AlignmentJob, name: b}, method: sft, data: {uri: x}}\n---\n"
        + HEAD
        + "kind: AlignmentJob\nmetadata: {name: b}\n"
        "spec: {modelRef: {kind: AlignmentJob, name: a}, method: sft, data: {uri: x}}\n",
    )
    _, problems = validate_paths([path])
    assert any("reference cycle: AlignmentJob/a -> AlignmentJob/b -> AlignmentJob/a" in str(p) for p in problems)


def test_reward_model_ref_must_be_a_reward_model(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        HEAD + "kind: AlignmentJob\nmetadata: {name: base}\n"
        "spec: {modelRef: {uri: /m}, method: sft, data: {uri: x}}\n---\n"
        + HEAD
        + "kind: AlignmentJob\nmetadata: {name: rl}\n"
        "spec: {modelRef: {uri: /m}, method: ppo, data: {uri: x}, ppo: {rewardModelRef: {name: base}}}\n",
    )
    _, problems = validate_paths([path])
    assert any("spec.ppo.rewardModelRef: AlignmentJob/base trains method sft" in str(p) for p in problems)


def test_lora_adapter_served_must_publish_an_adapter(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        HEAD + "kind: AlignmentJob\nmetadata: {name: full}\n"
        "spec: {modelRef: {uri: /m}, method: sft, data: {uri: x}}\n---\n"
        + HEAD
        + "kind: ModelRelease\nmetadata: {name: r}\n"
        "spec: {modelRef: {uri: /m}, serving: {loraAdapters: [{name: full}]}}\n",
    )
    _, problems = validate_paths([path])
    assert any("does not publish a LoRA adapter" in str(p) for p in problems)


def test_yaml_errors_and_missing_files_are_problems_not_tracebacks(tmp_path: Path) -> None:
    bad = _write(tmp_path, "kind: [unclosed\n")
    _, problems = validate_paths([bad, tmp_path / "nope.yaml"])
    assert any("not valid YAML" in str(p) for p in problems)
    assert any("no such file" in str(p) for p in problems)


def test_dependency_order_puts_inputs_first() -> None:
    manifests, problems = validate_paths([ROOT / "examples" / "tiny"])
    assert not problems
    ordered = [r.metadata.name for r in dependency_order(list(reversed([m.resource for m in manifests])))]
    assert ordered.index("tiny-corpus") < ordered.index("tiny-base") < ordered.index("tiny-sft")
    # the candidate gate: compress (tiny-release) -> evaluate the candidate (tiny-eval) -> gate -> serve
    assert ordered.index("tiny-dpo") < ordered.index("tiny-release") < ordered.index("tiny-eval")


def test_json_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    path = _write(tmp_path, HEAD + "kind: Dataset\nmetadata: {name: d}\nspec: {}\n")
    assert main(["validate", "-o", "json", str(path)]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["valid"] is False and out["problems"][0]["field"] == "spec.sources"


@pytest.mark.parametrize("value", ["maybe", "'true'", "1", "{}"])
def test_training_compile_takes_true_false_or_auto_only(tmp_path: Path, value: str) -> None:
    path = _write(
        tmp_path,
        HEAD + f"kind: PretrainJob\nmetadata: {{name: p}}\nspec: {{datasetRef: {{name: d}}, "
        f"training: {{maxSteps: 1, compile: {value}}}}}\n",
    )
    _, problems = validate_paths([path])
    [problem] = [str(p) for p in problems if "spec.training.compile" in str(p)]
    assert 'PretrainJob/p: spec.training.compile: must be true, false or "auto"' in problem


@pytest.mark.parametrize(("value", "parsed"), [("true", True), ("false", False), ("auto", "auto"), (None, "auto")])
def test_training_compile_keeps_true_and_false_and_defaults_to_auto(value: str | None, parsed: object) -> None:
    from lmforge.api.pretrain import Training

    fields: dict[str, object] = {"maxSteps": 1}
    if value is not None:
        fields["compile"] = {"true": True, "false": False}.get(value, value)
    assert Training.model_validate(fields).compile == parsed
