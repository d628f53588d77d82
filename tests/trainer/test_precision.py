"""The precision a training stage runs in: bf16 on a CPU without native bf16 becomes fp32, announced;
every other case keeps the spec's precision."""

from __future__ import annotations

from typing import Any

import pytest

from lmforge.api.alignment import AlignmentJob
from lmforge.api.dataset import Dataset
from lmforge.api.kinds import Resource
from lmforge.api.pretrain import PretrainJob
from lmforge.api.training import Precision
from lmforge.trainer import precision

PRETRAIN = {
    "apiVersion": "lmforge.io/v1alpha1",
    "kind": "PretrainJob",
    "metadata": {"name": "p"},
    "spec": {"datasetRef": {"name": "d"}, "training": {"maxSteps": 2}},
}
ALIGN = {
    "apiVersion": "lmforge.io/v1alpha1",
    "kind": "AlignmentJob",
    "metadata": {"name": "a"},
    "spec": {"modelRef": {"uri": "m"}, "method": "sft", "data": {"uri": "x.jsonl"}},
}
DATASET = {
    "apiVersion": "lmforge.io/v1alpha1",
    "kind": "Dataset",
    "metadata": {"name": "d"},
    "spec": {"sources": [{"name": "s", "uri": "x.txt", "license": "MIT"}]},
}


def _with(manifest: dict[str, Any], **training: Any) -> dict[str, Any]:
    spec = {**manifest["spec"], "training": {**manifest["spec"].get("training", {}), **training}}
    return {**manifest, "spec": spec}


# (case, manifest, native bf16 on this CPU, LMFORGE_CPU_BF16, GPUs seen, precision it trains in, noted)
CASES = [
    ("pretrain bf16, CPU without bf16: fp32", _with(PRETRAIN, precision="bf16"), False, None, False, "fp32", True),
    ("alignment bf16, CPU without bf16: fp32", _with(ALIGN, precision="bf16"), False, None, False, "fp32", True),
    ("default precision is bf16, so it falls back too", PRETRAIN, False, None, False, "fp32", True),
    ("CPU with native bf16 keeps bf16", _with(PRETRAIN, precision="bf16"), True, None, False, "bf16", False),
    ("fp32 asked stays fp32, no note", _with(ALIGN, precision="fp32"), False, None, False, "fp32", False),
    ("emulated asked for keeps bf16", _with(PRETRAIN, precision="bf16"), False, "emulated", False, "bf16", False),
    ("on a GPU bf16 is the GPU's", _with(PRETRAIN, precision="bf16"), False, None, True, "bf16", False),
]


@pytest.mark.parametrize(
    ("manifest", "native", "env", "gpu", "expected", "noted"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_effective_precision(
    monkeypatch: pytest.MonkeyPatch,
    manifest: dict[str, Any],
    native: bool,
    env: str | None,
    gpu: bool,
    expected: str,
    noted: bool,
) -> None:
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    monkeypatch.setattr(precision, "trains_on_gpu", lambda gpus: gpu)
    if env is None:
        monkeypatch.delenv(precision.KEEP_ENV, raising=False)
    else:
        monkeypatch.setenv(precision.KEEP_ENV, env)
    kind: type[PretrainJob] | type[AlignmentJob] = PretrainJob if manifest["kind"] == "PretrainJob" else AlignmentJob
    resource: Resource = kind.model_validate(manifest)
    got, note = precision.effective_precision(resource)
    assert isinstance(got, PretrainJob | AlignmentJob)
    assert got.spec.training.precision is Precision(expected)
    assert (note is not None) is noted
    if noted:
        assert note is not None and "spec.training.precision" in note and precision.KEEP_ENV in note
    asked = manifest["spec"]["training"].get("precision", "bf16")
    assert resource.spec.training.precision is Precision(asked)  # the caller's resource is untouched


def test_a_dataset_is_not_touched(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    resource = Dataset.model_validate(DATASET)
    assert precision.effective_precision(resource) == (resource, None)
