"""The base model: where it comes from, what it descends from, and loading it for training.

`spec.modelRef` names a PretrainJob/AlignmentJob/ModelRelease (its `model` artifact, resolved by the
runner into `spec.inputs`) or a Hugging Face-format directory by URI (a user upload, no manifest
needed). The base's manifest metadata carries `lineage` and the `dataset` it was trained on; both are
carried forward so the model card and the EvalSuite (which reads `metadata.dataset.shards` for
perplexity) see the whole history.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmforge.api.alignment import AlignmentJob, AlignmentJobSpec
from lmforge.api.training import Precision
from lmforge.store import open_store, read_manifest
from lmforge.trainer.artifacts import fetch, split_uri
from lmforge.trainer.chat import TemplateError, resolve_template
from lmforge.trainer.context import StageContext
from lmforge.trainer.errors import InvalidInput


@dataclass
class BaseModel:
    """A fetched base model and its history."""

    path: Path
    """Local Hugging Face directory."""
    uri: str
    """Where it came from (for the model card)."""
    lineage: list[str] = field(default_factory=list)
    """Its lineage, oldest first."""
    dataset: dict[str, Any] | None = None
    """The `dataset` metadata of the base (pretraining shards), carried forward."""


def _manifest_metadata(uri: str) -> dict[str, Any]:
    root, leaf = split_uri(uri)
    try:
        manifest = read_manifest(open_store(root), leaf)
    except Exception:  # a user-uploaded directory may sit where no manifest can be read
        return {}
    return dict(manifest.metadata) if manifest is not None else {}


def resolve_base(ctx: StageContext, ref_kind: str | None, ref_name: str | None, ref_uri: str | None) -> BaseModel:
    """Fetch the model a `ModelRef` points at (a resource's `model` artifact, or a URI)."""
    if ref_name is not None:
        found = ctx.input(str(ref_kind), ref_name)
        uri = found.artifacts.get("model")
        if uri is None:
            raise InvalidInput(f"spec.modelRef: {ref_kind}/{ref_name} published no `model` artifact "
                               f"(it has: {', '.join(sorted(found.artifacts)) or 'none'})")
        meta = _manifest_metadata(uri)
        lineage = list(meta.get("lineage") or found.lineage)
        own = f"{ref_kind}/{ref_name}"
        if own not in lineage:
            lineage.append(own)
        return BaseModel(fetch(uri), uri, lineage, meta.get("dataset"))
    assert ref_uri is not None
    uri = ctx.resolve(ref_uri)
    meta = _manifest_metadata(uri)
    path = fetch(uri, require_manifest=False)
    if not (path / "config.json").is_file():
        raise InvalidInput(f"spec.modelRef.uri: {uri} is not a Hugging Face model directory (no config.json)")
    return BaseModel(path, uri, [*list(meta.get("lineage") or []), uri], meta.get("dataset"))


def lineage_of(job: AlignmentJob, base: BaseModel) -> list[str]:
    """The base's lineage plus this job."""
    return [*base.lineage, f"AlignmentJob/{job.metadata.name}"]


def load_tokenizer(path: Path, spec: AlignmentJobSpec) -> Any:
    """The base tokenizer with the chat template the job trains with (and a pad token)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    try:
        tok.chat_template = resolve_template(tok, spec.chat_template)
    except TemplateError as exc:
        raise InvalidInput(f"spec.chatTemplate: {exc}") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def on_gpu(spec: AlignmentJobSpec) -> bool:
    """Whether this run trains on GPUs (spec asks for them and torch sees one)."""
    import torch

    return spec.topology.gpus_per_node > 0 and torch.cuda.is_available()


def check_precision(spec: AlignmentJobSpec) -> None:
    """fp16 needs a GPU; say so instead of silently training in another precision."""
    if spec.training.precision is Precision.FP16 and not on_gpu(spec):
        raise InvalidInput("spec.training.precision: fp16 needs a GPU; use bf16 or fp32 on the CPU")


def load_model(path: Path, spec: AlignmentJobSpec, *, reward_head: bool = False) -> Any:
    """The base as a causal LM (or, for a reward model, a one-label sequence classifier), 4-bit
    quantised for QLoRA. Weights stay fp32 on the CPU; bf16 comes from autocast in the trainer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from lmforge.trainer.align.lora import quantization_config

    kwargs: dict[str, Any] = {}
    if on_gpu(spec) and spec.training.precision is Precision.BF16:
        kwargs["dtype"] = torch.bfloat16
    quant = quantization_config(spec)
    if quant is not None:
        kwargs["quantization_config"] = quant
    if reward_head:
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, **kwargs)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if model.config.pad_token_id is None and model.config.eos_token_id is not None:
        eos = model.config.eos_token_id
        model.config.pad_token_id = eos[0] if isinstance(eos, list) else eos
    return model
