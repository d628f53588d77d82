"""The registry of LMForge kinds: names, plurals, printer columns, and the references each kind
makes to others. CRD generation, validation and the reconcilers all read this one table."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from lmforge.api.alignment import AlignmentJob
from lmforge.api.contract import InputArtifacts
from lmforge.api.dataset import Dataset
from lmforge.api.evalsuite import EvalSuite
from lmforge.api.meta import LocalRef, ModelKind, ModelRef
from lmforge.api.pretrain import PretrainJob
from lmforge.api.release import ModelRelease

Resource = Dataset | PretrainJob | AlignmentJob | EvalSuite | ModelRelease
"""Any LMForge resource."""


@dataclass(frozen=True)
class PrinterColumn:
    name: str
    json_path: str
    type: str = "string"
    priority: int = 0
    description: str = ""


@dataclass(frozen=True)
class KindInfo:
    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]
    model: type[Resource]
    columns: tuple[PrinterColumn, ...]
    description: str


_COMMON_HEAD = (
    PrinterColumn("Phase", ".status.phase", description="Life-cycle phase"),
    PrinterColumn("Progress", ".status.progress.percent", "number", description="Percent done of the running stage"),
)
_COMMON_TAIL = (
    PrinterColumn(
        "Reason",
        '.status.conditions[?(@.type=="Ready")].reason',
        priority=1,
        description="Reason of the Ready condition",
    ),
    PrinterColumn("Age", ".metadata.creationTimestamp", "date"),
)


def _columns(*middle: PrinterColumn) -> tuple[PrinterColumn, ...]:
    return _COMMON_HEAD + middle + _COMMON_TAIL


KINDS: dict[str, KindInfo] = {
    "Dataset": KindInfo(
        "Dataset",
        "datasets",
        "dataset",
        ("lmds",),
        Dataset,
        _columns(
            PrinterColumn("Tokens", ".status.metrics.tokens", "number", description="Tokens in the shards"),
            PrinterColumn("Key", ".status.keyMetric", priority=1),
        ),
        "Curated, tokenized and packed training data with a dataset card.",
    ),
    "PretrainJob": KindInfo(
        "PretrainJob",
        "pretrainjobs",
        "pretrainjob",
        ("ptj",),
        PretrainJob,
        _columns(
            PrinterColumn("Loss", ".status.metrics.loss", "number", description="Latest training loss"),
            PrinterColumn("Tokens/s", ".status.metrics.tokens_per_second", "number", priority=1),
        ),
        "Next-token pretraining with DeepSpeed, checkpoints, resume and Hugging Face export.",
    ),
    "AlignmentJob": KindInfo(
        "AlignmentJob",
        "alignmentjobs",
        "alignmentjob",
        ("alj",),
        AlignmentJob,
        _columns(
            PrinterColumn("Method", ".spec.method"),
            PrinterColumn("Loss", ".status.metrics.loss", "number", description="Latest training loss"),
        ),
        "SFT, reward model, PPO or DPO of a base model, fully or with LoRA/QLoRA.",
    ),
    "EvalSuite": KindInfo(
        "EvalSuite",
        "evalsuites",
        "evalsuite",
        ("evs",),
        EvalSuite,
        _columns(
            PrinterColumn(
                "Gate", '.status.conditions[?(@.type=="GatePassed")].status', description="Whether every threshold held"
            ),
            PrinterColumn("Key", ".status.keyMetric"),
        ),
        "Evaluation tasks and the thresholds that gate a release.",
    ),
    "ModelRelease": KindInfo(
        "ModelRelease",
        "modelreleases",
        "modelrelease",
        ("mrel",),
        ModelRelease,
        _columns(PrinterColumn("Endpoint", ".status.endpoint"), PrinterColumn("Key", ".status.keyMetric", priority=1)),
        "A compressed, evaluated model served by vLLM behind an OpenAI-compatible API.",
    ),
}
"""Every kind, keyed by `kind`."""

ORDER = ("Dataset", "PretrainJob", "AlignmentJob", "EvalSuite", "ModelRelease")


@dataclass(frozen=True)
class Reference:
    """An edge from one resource to another."""

    kind: str
    name: str
    field: str
    """Wire path of the referencing field, e.g. `spec.datasetRef`."""
    needs_ready: bool = True
    """Whether the referrer waits for the target to be Ready (False: it only reads its spec)."""
    candidate: bool = False
    """An EvalSuite's `modelRef` to a ModelRelease: it waits only for the release's compressed
    candidate (its `model` artifact), not for the release to be Ready — a release gated on the suite
    becomes Ready only after the suite has evaluated that candidate."""
    hot: bool = False
    """A ModelRelease's `serving.loraAdapters` entry: an adapter its running server loads and unloads.
    Never waited for: resolved once the AlignmentJob is Ready, else left out (the release serves
    without it), and no part of the release's run identity."""


def _model(ref: ModelRef | None, field: str) -> Iterator[Reference]:
    if ref is not None and ref.name is not None and ref.kind is not None:
        yield Reference(ref.kind.value, ref.name, field)


def _local(kind: str, ref: LocalRef | None, field: str, needs_ready: bool = True) -> Iterator[Reference]:
    if ref is not None:
        yield Reference(kind, ref.name, field, needs_ready)


def references(resource: Resource) -> list[Reference]:
    """Every reference a resource makes, with the field that makes it."""
    out: list[Reference] = []
    if isinstance(resource, Dataset):
        decon = resource.spec.dedup.decontaminate
        for i, ref in enumerate(decon.eval_suite_refs if decon else []):
            out += _local("EvalSuite", ref, f"spec.dedup.decontaminate.evalSuiteRefs[{i}]", needs_ready=False)
    elif isinstance(resource, PretrainJob):
        pspec = resource.spec
        out += _local("Dataset", pspec.dataset_ref, "spec.datasetRef")
        out += _model(pspec.init_from, "spec.initFrom")
        out += _local("Dataset", pspec.replay.dataset_ref if pspec.replay else None, "spec.replay.datasetRef")
    elif isinstance(resource, AlignmentJob):
        out += _model(resource.spec.model_ref, "spec.modelRef")
        ppo = resource.spec.ppo
        out += _local("AlignmentJob", ppo.reward_model_ref if ppo else None, "spec.ppo.rewardModelRef")
        for name in ("grpo", "rloo"):
            group = getattr(resource.spec, name)
            for i, reward in enumerate(group.rewards if group else []):
                out += _local("AlignmentJob", reward.model_ref, f"spec.{name}.rewards[{i}].modelRef")
    elif isinstance(resource, EvalSuite):
        espec = resource.spec
        evaluated = espec.model_ref
        if evaluated is not None and evaluated.kind is ModelKind.MODEL_RELEASE and evaluated.name is not None:
            out.append(
                Reference(evaluated.kind.value, evaluated.name, "spec.modelRef", needs_ready=False, candidate=True)
            )
        else:
            out += _model(evaluated, "spec.modelRef")
        out += _local(
            "ModelRelease", espec.endpoint.release_ref if espec.endpoint else None, "spec.endpoint.releaseRef"
        )
        out += _local("EvalSuite", espec.baseline_ref, "spec.baselineRef")
        for i, task in enumerate(espec.tasks):
            out += _model(
                task.classifier.model_ref if task.classifier else None, f"spec.tasks[{i}].classifier.modelRef"
            )
    elif isinstance(resource, ModelRelease):
        rspec = resource.spec
        out += _model(rspec.model_ref, "spec.modelRef")
        out += _local("EvalSuite", rspec.eval_suite_ref, "spec.evalSuiteRef")
        quant = rspec.compression.quantization
        out += _local("Dataset", quant.calibration_dataset_ref, "spec.compression.quantization.calibrationDatasetRef")
        distil = rspec.compression.distillation
        out += _local("Dataset", distil.dataset_ref if distil else None, "spec.compression.distillation.datasetRef")
        out += _local(
            "EvalSuite", rspec.serving.smoke_eval_suite_ref, "spec.serving.smokeEvalSuiteRef", needs_ready=False
        )
        for i, ref in enumerate(rspec.serving.lora_adapters):
            out.append(Reference("AlignmentJob", ref.name, f"spec.serving.loraAdapters[{i}]", hot=True))
    return out


def lora_adapters_of(release: ModelRelease, inputs: Mapping[str, InputArtifacts]) -> dict[str, str]:
    """Adapter name (its AlignmentJob's: the model name in the API) → adapter artifact URI, for each
    of `serving.loraAdapters` whose AlignmentJob is among the resolved `inputs` (Ready) and published
    an adapter, in the listed order. A release never waits for an adapter (its `Reference` is `hot`):
    the others are simply not served yet. One rule for the reconciler (what to load into a running
    server) and the serve stage (what it starts with)."""
    out: dict[str, str] = {}
    for ref in release.spec.serving.lora_adapters:
        found = inputs.get(f"AlignmentJob/{ref.name}")
        uri = found.artifacts.get("adapter") if found is not None else None
        if uri:
            out[ref.name] = uri
    return out


def evaluates_candidate(suite_spec: Mapping[str, Any] | None, release: str) -> bool:
    """Whether an EvalSuite (its spec in wire form, as the API server or a manifest holds it)
    evaluates ModelRelease `release`'s compressed candidate: then the release's `evalSuiteRef` to it
    is a gate checked after compression, not an input the release waits for before compressing."""
    ref = (suite_spec or {}).get("modelRef") or {}
    return isinstance(ref, Mapping) and ref.get("kind") == ModelKind.MODEL_RELEASE.value and ref.get("name") == release


def smoke_suite_of(release_spec: Mapping[str, Any] | None, suite: str) -> bool:
    """Whether a ModelRelease (its spec in wire form) names EvalSuite `suite` as its smoke suite: that
    suite then evaluates the release's *new* server during a switch (`status.rollout`)."""
    ref = ((release_spec or {}).get("serving") or {}).get("smokeEvalSuiteRef") or {}
    return isinstance(ref, Mapping) and ref.get("name") == suite


def gate_edge(referrer: Resource, ref: Reference, target_spec: Mapping[str, Any] | None) -> bool:
    """Whether `ref` is a ModelRelease's `evalSuiteRef` to a suite that evaluates its own candidate
    (the edge back from compress → evaluate → gate, which orders nothing and waits for nothing)."""
    return (
        isinstance(referrer, ModelRelease)
        and ref.field == "spec.evalSuiteRef"
        and evaluates_candidate(target_spec, referrer.metadata.name)
    )


def key(resource: Resource) -> str:
    """`Kind/name`, the identity of a resource within a namespace."""
    return f"{resource.kind}/{resource.metadata.name}"
