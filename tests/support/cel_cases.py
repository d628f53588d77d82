"""Specs that break each cross-field rule (`lmforge.api.meta.Rule`) once, beside a valid base spec
per kind: tests/api/test_rules.py checks the Python validators reject each and name the field, and
tests/cluster/test_crd_validation.py applies the same specs to a real API server, whose CEL rules
(generated from the same `Rule`s) must reject them naming the same field."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

BASES: dict[str, dict[str, Any]] = {
    "Dataset": {"sources": [{"name": "s", "uri": "s3://b/x.jsonl", "license": "MIT"}]},
    "PretrainJob": {"datasetRef": {"name": "d"}, "training": {"maxSteps": 10}},
    "AlignmentJob": {"modelRef": {"uri": "s3://b/m"}, "method": "sft", "data": {"uri": "s3://b/sft.jsonl"}},
    "EvalSuite": {"modelRef": {"uri": "s3://b/m"}, "tasks": [{"name": "ppl", "type": "perplexity"}]},
    "ModelRelease": {"modelRef": {"uri": "s3://b/m"}},
}
"""A valid spec of each kind, as small as the models allow."""

PLURALS = {
    "Dataset": "datasets",
    "PretrainJob": "pretrainjobs",
    "AlignmentJob": "alignmentjobs",
    "EvalSuite": "evalsuites",
    "ModelRelease": "modelreleases",
}


@dataclass(frozen=True)
class CelCase:
    rule: str
    """The `Rule.message` this case breaks."""
    kind: str
    spec: dict[str, Any]
    """Merged over the kind's base spec (a None value removes the key)."""
    field: str
    """Wire path of the field both the model and the API server must name."""

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.field}:{self.rule[:40]}"

    def resource(self, name: str = "bad") -> dict[str, Any]:
        return resource(self.kind, _merge(copy.deepcopy(BASES[self.kind]), self.spec), name)


def resource(kind: str, spec: dict[str, Any], name: str = "ok") -> dict[str, Any]:
    return {"apiVersion": "lmforge.io/v1alpha1", "kind": kind, "metadata": {"name": name}, "spec": spec}


def _merge(into: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    for key, value in patch.items():
        if value is None:
            into.pop(key, None)
        elif isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value
    return into


_SOURCE = {"name": "s", "uri": "s3://b/x.jsonl", "license": "MIT"}

CASES = [
    CelCase(
        "minLr must not exceed lr", "PretrainJob", {"optimizer": {"lr": 0.001, "minLr": 0.01}}, "spec.optimizer.minLr"
    ),
    CelCase(
        "offloadParams needs zeroStage 3",
        "PretrainJob",
        {"deepspeed": {"zeroStage": 2, "offloadParams": "cpu"}},
        "spec.deepspeed.offloadParams",
    ),
    CelCase(
        "offloadOptimizer needs zeroStage ≥ 1",
        "PretrainJob",
        {"deepspeed": {"zeroStage": 0, "offloadOptimizer": "cpu"}},
        "spec.deepspeed.offloadOptimizer",
    ),
    CelCase(
        "hiddenSize must be divisible by numHeads, or set headDim",
        "PretrainJob",
        {"model": {"hiddenSize": 100, "numHeads": 3}},
        "spec.model.hiddenSize",
    ),
    CelCase(
        "numHeads must be a multiple of numKvHeads",
        "PretrainJob",
        {"model": {"numHeads": 12, "numKvHeads": 5}},
        "spec.model.numHeads",
    ),
    CelCase(
        "set exactly one of maxSteps or tokens",
        "PretrainJob",
        {"training": {"maxSteps": 10, "tokens": 1000}},
        "spec.training.maxSteps",
    ),
    CelCase(
        "replay is for continual pretraining: set initFrom too",
        "PretrainJob",
        {"replay": {"datasetRef": {"name": "old"}}},
        "spec.replay",
    ),
    CelCase(
        "training.precision fp16 needs GPUs (topology.gpusPerNode > 0)",
        "PretrainJob",
        {"training": {"precision": "fp16"}},
        "spec.training.precision",
    ),
    CelCase(
        "set exactly one of `name` (with `kind`) or `uri`",
        "PretrainJob",
        {"initFrom": {"kind": "PretrainJob", "name": "a", "uri": "s3://b/m"}, "replay": None},
        "spec.initFrom.name",
    ),
    CelCase(
        "`kind` is required with `name`", "ModelRelease", {"modelRef": {"uri": None, "name": "a"}}, "spec.modelRef.kind"
    ),
    CelCase(
        "minWords must not exceed maxWords",
        "Dataset",
        {"quality": {"minWords": 50, "maxWords": 10}},
        "spec.quality.minWords",
    ),
    CelCase(
        "minMeanWordLength must not exceed maxMeanWordLength",
        "Dataset",
        {"quality": {"minMeanWordLength": 9.0, "maxMeanWordLength": 4.0}},
        "spec.quality.minMeanWordLength",
    ),
    CelCase(
        "set both `bands` and `rows`, or neither", "Dataset", {"dedup": {"near": {"bands": 8}}}, "spec.dedup.near.bands"
    ),
    CelCase(
        "bands × rows must equal numPerm",
        "Dataset",
        {"dedup": {"near": {"numPerm": 112, "bands": 10, "rows": 10}}},
        "spec.dedup.near.bands",
    ),
    CelCase("source names must be unique", "Dataset", {"sources": [_SOURCE, _SOURCE]}, "spec.sources"),
    CelCase(
        "every source's license must be in allowedLicenses",
        "Dataset",
        {"sources": [{**_SOURCE, "license": "Proprietary-1.0"}]},
        "spec.sources",
    ),
    CelCase(
        "tokenizer.vocabSize must hold the byte alphabet plus the special tokens",
        "Dataset",
        {"tokenizer": {"vocabSize": 260, "specialTokens": ["<a>", "<b>", "<c>", "<d>", "<e>"]}},
        "spec.tokenizer.vocabSize",
    ),
    CelCase(
        "set exactly one of rewardModelRef or rewardFunction",
        "AlignmentJob",
        {"method": "ppo", "ppo": {"rewardModelRef": {"name": "rm"}, "rewardFunction": "m:f"}},
        "spec.ppo.rewardModelRef",
    ),
    CelCase("the `ppo` options are needed by, and only for, method ppo", "AlignmentJob", {"method": "ppo"}, "spec.ppo"),
    CelCase(
        "adapter.type qlora needs a GPU (topology.gpusPerNode > 0)",
        "AlignmentJob",
        {"adapter": {"type": "qlora"}},
        "spec.adapter.type",
    ),
    CelCase(
        "a reward model is published merged: adapter.output must be merged for method reward",
        "AlignmentJob",
        {"method": "reward", "adapter": {"type": "lora", "output": "adapter"}},
        "spec.adapter.output",
    ),
    CelCase(
        "promptTemplate must contain {question}",
        "EvalSuite",
        {"tasks": [{"name": "mc", "type": "multipleChoice", "dataUri": "s3://b/mc.jsonl", "promptTemplate": "Q: A:"}]},
        "spec.tasks[0].promptTemplate",
    ),
    CelCase(
        "judge applies to safety tasks",
        "EvalSuite",
        {
            "tasks": [
                {
                    "name": "g",
                    "type": "generation",
                    "dataUri": "s3://b/g.jsonl",
                    "judge": {"url": "http://j/v1", "model": "m"},
                }
            ]
        },
        "spec.tasks[0].judge",
    ),
    CelCase(
        "a safety task has a classifier or a judge, not both",
        "EvalSuite",
        {
            "tasks": [
                {
                    "name": "s",
                    "type": "safety",
                    "judge": {"url": "http://j/v1", "model": "m"},
                    "classifier": {"modelRef": {"uri": "s3://b/c"}},
                }
            ]
        },
        "spec.tasks[0].judge",
    ),
    CelCase(
        "promptTemplate must contain {prompt} and {response}",
        "EvalSuite",
        {
            "tasks": [
                {
                    "name": "s",
                    "type": "safety",
                    "judge": {"url": "http://j/v1", "model": "m", "promptTemplate": "Is {prompt} ok?"},
                }
            ]
        },
        "spec.tasks[0].judge.promptTemplate",
    ),
    CelCase(
        "set exactly one of url or releaseRef",
        "EvalSuite",
        {"modelRef": None, "endpoint": {"url": "http://x/v1", "releaseRef": {"name": "r"}}},
        "spec.endpoint.url",
    ),
    CelCase(
        "set exactly one of modelRef or endpoint", "EvalSuite", {"endpoint": {"url": "http://x/v1"}}, "spec.modelRef"
    ),
    CelCase(
        "task names must be unique",
        "EvalSuite",
        {"tasks": [{"name": "ppl", "type": "perplexity"}, {"name": "ppl", "type": "perplexity"}]},
        "spec.tasks",
    ),
    CelCase(
        "serving.tensorParallelSize must not exceed gpus",
        "ModelRelease",
        {"gpus": 1, "serving": {"tensorParallelSize": 4}},
        "spec.serving.tensorParallelSize",
    ),
    CelCase(
        "serving.loraAdapters must not list more adapters than serving.maxLoras (default 4)",
        "ModelRelease",
        {"serving": {"maxLoras": 1, "loraAdapters": [{"name": "a"}, {"name": "b"}]}},
        "spec.serving.loraAdapters",
    ),
    CelCase(
        "serving.canary.steps must be strictly increasing",
        "ModelRelease",
        {"serving": {"canary": {"steps": [10, 50, 50]}}},
        "spec.serving.canary.steps",
    ),
]
