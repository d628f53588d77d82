"""Publishing the result: a Hugging Face model directory (merged or fully trained weights, tokenizer
with its chat template, README.md model card with lineage) and, for `adapter.output: adapter`, the peft
adapter directory instead.

With `adapter.output: adapter` only the `adapter` artifact is published, not `model`: a `model`
holding the unchanged base would let an EvalSuite or ModelRelease silently evaluate or ship weights
without the training applied. The adapter directory is self-describing (its `adapter_config.json` names
the base model's URI, the tokenizer is saved beside it, and the manifest metadata has `baseModel`);
use `output: merged` (the default) for a model the rest of the pipeline consumes directly.
"""

from __future__ import annotations

import json
from typing import Any

from lmforge.api.alignment import AdapterOutput, AlignmentJob, AlignmentMethod
from lmforge.api.contract import ArtifactName
from lmforge.trainer.align.base import BaseModel, lineage_of
from lmforge.trainer.align.lora import uses_adapter
from lmforge.trainer.artifacts import publish
from lmforge.trainer.context import StageContext
from lmforge.trainer.turns import write_generation_config


def hyper_parameters(job: AlignmentJob) -> dict[str, Any]:
    """The settings that shaped the weights, as written on the wire."""
    s = job.spec
    out: dict[str, Any] = {"training": s.training.wire(), "adapter": s.adapter.wire()}
    if s.method is AlignmentMethod.SFT:
        out["sft"] = s.sft.wire()
    if s.method in (AlignmentMethod.DPO, AlignmentMethod.IPO):
        out["preference"] = s.preference.wire()
    if s.ppo is not None:
        out["ppo"] = s.ppo.wire()
    if s.method is AlignmentMethod.KTO:
        out["kto"] = s.kto.wire()
    for name in ("grpo", "rloo"):
        if getattr(s, name) is not None:
            out[name] = getattr(s, name).wire()
    return out


def model_card(job: AlignmentJob, base: BaseModel, data_uri: str, metrics: dict[str, float]) -> str:
    """README.md: what this model is, what it came from, how it was trained, how it scored."""
    lines = [
        f"# {job.metadata.name}",
        "",
        f"Produced by LMForge AlignmentJob `{job.metadata.name}` with method **{job.spec.method.value}**"
        + (f" ({job.spec.adapter.type.value}, {job.spec.adapter.output.value})" if uses_adapter(job.spec) else "")
        + ".",
        "",
        "## Lineage",
        "",
        f"- Base model: `{base.uri}`",
        *[f"- {step}" for step in lineage_of(job, base)],
        "",
        "## Data",
        "",
        f"- Training rows: `{data_uri}`",
    ]
    if base.dataset:
        lines.append(f"- Base pretraining data: `{json.dumps(base.dataset, sort_keys=True)}`")
    lines += [
        "",
        "## Hyper-parameters",
        "",
        "```json",
        json.dumps(hyper_parameters(job), indent=2, sort_keys=True),
        "```",
        "",
        "## Metrics",
        "",
    ]
    lines += [f"- {k}: {v:.4g}" for k, v in sorted(metrics.items())] or ["- (none)"]
    return "\n".join(lines) + "\n"


def metadata(job: AlignmentJob, base: BaseModel, data_uri: str, metrics: dict[str, float]) -> dict[str, Any]:
    """Manifest metadata of the published artifacts (downstream stages read lineage and dataset)."""
    meta: dict[str, Any] = {
        "lineage": lineage_of(job, base),
        "method": job.spec.method.value,
        "baseModel": base.uri,
        "data": data_uri,
        "hyperParameters": hyper_parameters(job),
        "metrics": metrics,
    }
    if base.dataset is not None:
        meta["dataset"] = base.dataset
    return meta


def export(
    ctx: StageContext,
    job: AlignmentJob,
    model: Any,
    tokenizer: Any,
    base: BaseModel,
    data_uri: str,
    metrics: dict[str, float],
) -> dict[str, str]:
    """Save and publish; returns artifact name → URI. `model` may be a peft model."""
    out = ctx.work_dir / "export"
    meta = metadata(job, base, data_uri, metrics)
    card = model_card(job, base, data_uri, metrics)
    adapter_only = uses_adapter(job.spec) and job.spec.adapter.output is AdapterOutput.ADAPTER
    if adapter_only:
        adir = out / "adapter"
        model.save_pretrained(adir)
        tokenizer.save_pretrained(adir)
        config_path = adir / "adapter_config.json"
        config = json.loads(config_path.read_text())
        config["base_model_name_or_path"] = base.uri
        config_path.write_text(json.dumps(config, indent=2))
        (adir / "README.md").write_text(card)
        return {ArtifactName.ADAPTER.value: publish(ctx, ArtifactName.ADAPTER.value, adir, "peft-adapter", meta)}
    if uses_adapter(job.spec):
        model = model.merge_and_unload()
    mdir = out / "model"
    model.save_pretrained(mdir, safe_serialization=True)
    tokenizer.save_pretrained(mdir)
    write_generation_config(mdir, tokenizer)
    (mdir / "README.md").write_text(card)
    kind = "hf-reward-model" if job.spec.method is AlignmentMethod.REWARD else "hf-model"
    return {ArtifactName.MODEL.value: publish(ctx, ArtifactName.MODEL.value, mdir, kind, meta)}
