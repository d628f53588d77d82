"""The models accept what users would write, fill the defaults they would want, and reject bad input
with an error that names the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from lmforge.api import KINDS, AlignmentJob, Dataset, EvalSuite, ModelRelease, PretrainJob
from lmforge.api.meta import ApiModel, Status

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _dataset(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"sources": [{"name": "a", "uri": "a.txt", "license": "CC0-1.0"}]}
    base.update(spec)
    return {"apiVersion": "lmforge.io/v1alpha1", "kind": "Dataset", "metadata": {"name": "d"}, "spec": base}


def _errors(model: type[ApiModel], doc: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ValidationError) as info:
        model.model_validate(doc)
    return [(".".join(str(p) for p in e["loc"]), e["msg"]) for e in info.value.errors()]


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*/*.yaml")), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_example_parses(path: Path) -> None:
    for doc in _docs(path):
        model = KINDS[doc["kind"]].model.model_validate(doc)
        assert model.metadata.name == doc["metadata"]["name"]


def test_wire_names_are_camel_case_and_python_names_snake_case() -> None:
    ds = Dataset.model_validate(_dataset(seqLength=64, validationFraction=0.1))
    assert ds.spec.seq_length == 64
    wire = ds.wire()
    assert wire["spec"]["seqLength"] == 64 and "seq_length" not in wire["spec"]
    assert wire["apiVersion"] == "lmforge.io/v1alpha1"


def test_defaults_a_new_user_wants() -> None:
    ds = Dataset.model_validate(_dataset())
    assert ds.spec.dedup.exact and ds.spec.dedup.near.enabled
    assert ds.spec.pii.enabled and len(ds.spec.pii.types) == 5
    assert "<|eos|>" in ds.spec.tokenizer.special_tokens
    job = PretrainJob.model_validate(
        {
            "apiVersion": "lmforge.io/v1alpha1",
            "kind": "PretrainJob",
            "metadata": {"name": "p"},
            "spec": {"datasetRef": {"name": "d"}, "training": {"maxSteps": 10}},
        }
    )
    assert job.spec.training.precision.value == "bf16"
    assert job.spec.checkpoint.resume is True
    assert job.spec.optimizer.schedule.value == "cosine"


@pytest.mark.parametrize(
    ("spec", "field", "fragment"),
    [
        ({"seqLenght": 4}, "spec.seqLenght", "Extra inputs"),
        ({"seqLength": -4}, "spec.seqLength", "greater than or equal"),
        ({"workers": "two"}, "spec.workers", "valid integer"),
        ({"sources": []}, "spec.sources", "at least 1"),
        ({"tokenizer": {"vocabSize": 100}}, "spec.tokenizer.vocabSize", "greater than or equal"),
        ({"dedup": {"near": {"numPerm": 128, "bands": 10, "rows": 8}}}, "spec.dedup.near", "must equal numPerm"),
    ],
    ids=["unknown-field", "negative-size", "wrong-type", "no-sources", "vocab-too-small", "bad-banding"],
)
def test_dataset_rejects_bad_input_naming_the_field(spec: dict[str, Any], field: str, fragment: str) -> None:
    errors = _errors(Dataset, _dataset(**spec))
    assert any(loc.replace(".0", "[0]").startswith(field) or loc.startswith(field) for loc, _ in errors), errors
    assert any(fragment in msg for _, msg in errors), errors


def test_license_outside_the_allow_list_is_rejected_with_the_source_named() -> None:
    doc = _dataset(sources=[{"name": "scraped", "uri": "x", "license": "proprietary"}])
    [(loc, msg)] = _errors(Dataset, doc)
    assert loc == "spec" and "scraped" in msg and "proprietary" in msg


def test_vocab_smaller_than_byte_alphabet_plus_specials() -> None:
    [(_, msg)] = _errors(Dataset, _dataset(tokenizer={"vocabSize": 262}))
    assert "byte alphabet" in msg


def _alignment(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "modelRef": {"kind": "PretrainJob", "name": "b"},
        "method": "sft",
        "data": {"uri": "x.jsonl"},
    }
    base.update(spec)
    return {"apiVersion": "lmforge.io/v1alpha1", "kind": "AlignmentJob", "metadata": {"name": "a"}, "spec": base}


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ({"method": "ppo"}, "method ppo needs"),
        ({"adapter": {"type": "qlora"}}, "qlora needs a GPU"),
        ({"method": "rlhf"}, "Input should be"),
        ({"modelRef": {"name": "b"}}, "`kind` is required"),
        ({"modelRef": {"kind": "PretrainJob", "name": "b", "uri": "s3://x"}}, "exactly one"),
        ({"method": "ppo", "ppo": {"klCoef": 0.1}}, "exactly one of rewardModelRef"),
        (
            {"method": "ppo", "ppo": {"rewardFunction": "m:f"}, "deepspeed": {"zeroStage": 2}},
            "method ppo does not run under DeepSpeed",
        ),
        (
            {"method": "ppo", "ppo": {"rewardFunction": "m:f"}, "training": {"gradientAccumulationSteps": 2}},
            "training.gradientAccumulationSteps must be 1",
        ),
        (
            {"method": "ppo", "ppo": {"rewardFunction": "m:f"}, "topology": {"nodes": 2}},
            "method ppo runs in one process",
        ),
        ({"method": "grpo"}, "method grpo needs the `grpo` options"),
        ({"method": "grpo", "grpo": {"rewards": []}}, "at least 1 item"),
        ({"method": "sft", "rloo": {"rewards": [{"type": "answer"}]}}, "`rloo` options are only for method rloo"),
        (
            {"method": "grpo", "grpo": {"numGenerations": 1, "rewards": [{"type": "answer"}]}},
            "greater than or equal to 2",
        ),
    ],
    ids=[
        "ppo-without-options",
        "qlora-on-cpu",
        "unknown-method",
        "ref-without-kind",
        "ref-and-uri",
        "ppo-without-reward",
        "ppo-deepspeed",
        "ppo-accumulation",
        "ppo-multi-node",
        "grpo-without-options",
        "grpo-without-rewards",
        "rloo-options-on-sft",
        "grpo-group-of-one",
    ],
)
def test_alignment_rejects(spec: dict[str, Any], fragment: str) -> None:
    errors = _errors(AlignmentJob, _alignment(**spec))
    assert any(fragment in msg for _, msg in errors), errors


def test_eval_thresholds_must_name_a_task_and_a_metric_it_produces() -> None:
    doc = {
        "apiVersion": "lmforge.io/v1alpha1",
        "kind": "EvalSuite",
        "metadata": {"name": "e"},
        "spec": {
            "modelRef": {"kind": "PretrainJob", "name": "p"},
            "tasks": [{"name": "mc", "type": "multipleChoice", "dataUri": "x"}],
            "thresholds": ["mc.acc >= 0.5"],
        },
    }
    suite = EvalSuite.model_validate(doc)
    [threshold] = suite.spec.parsed_thresholds()
    assert threshold.holds(0.5) and not threshold.holds(0.49)
    doc["spec"]["thresholds"] = ["other.acc >= 0.5"]
    assert any("no task named 'other'" in m for _, m in _errors(EvalSuite, doc))
    doc["spec"]["thresholds"] = ["mc.pass@1 >= 0.5"]
    assert any("produces acc, acc_norm" in m for _, m in _errors(EvalSuite, doc))
    doc["spec"]["thresholds"] = ["mc.acc => 0.5"]
    assert any("not of the form" in m for _, m in _errors(EvalSuite, doc))


def test_release_tensor_parallel_needs_gpus() -> None:
    doc = {
        "apiVersion": "lmforge.io/v1alpha1",
        "kind": "ModelRelease",
        "metadata": {"name": "r"},
        "spec": {"modelRef": {"uri": "s3://b/m"}, "serving": {"tensorParallelSize": 2}},
    }
    assert any("tensorParallelSize" in m for _, m in _errors(ModelRelease, doc))


def test_pretrain_needs_a_duration_and_sane_shapes() -> None:
    doc = {
        "apiVersion": "lmforge.io/v1alpha1",
        "kind": "PretrainJob",
        "metadata": {"name": "p"},
        "spec": {"datasetRef": {"name": "d"}, "training": {}},
    }
    assert any("exactly one of maxSteps or tokens" in m for _, m in _errors(PretrainJob, doc))
    doc["spec"]["training"] = {"maxSteps": 1}
    doc["spec"]["model"] = {"hiddenSize": 100, "numHeads": 3}
    assert any("divisible by numHeads" in m for _, m in _errors(PretrainJob, doc))


def test_every_field_is_documented() -> None:
    """Docs and `kubectl explain` come from these descriptions; an undocumented field is a bug."""
    missing: list[str] = []

    def walk(model: type[ApiModel], path: str, seen: set[type]) -> None:
        if model in seen:
            return
        seen.add(model)
        for name, field in model.model_fields.items():
            if not field.description:
                missing.append(f"{path}.{name}")
            for arg in _types(field.annotation):
                if isinstance(arg, type) and issubclass(arg, ApiModel):
                    walk(arg, f"{path}.{name}", seen)

    for info in KINDS.values():
        walk(info.model, info.kind, set())
    walk(Status, "Status", set())
    assert not missing, missing


def _types(annotation: Any) -> list[Any]:
    args = getattr(annotation, "__args__", None)
    if not args:
        return [annotation]
    out: list[Any] = []
    for a in args:
        out += _types(a)
    return out
