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

from lmforge.api.alignment import AdapterType, AlignmentJob, AlignmentJobSpec
from lmforge.api.training import Precision
from lmforge.store import open_store, read_manifest
from lmforge.trainer.artifacts import fetch, split_uri
from lmforge.trainer.chat import TemplateError, resolve_template
from lmforge.trainer.context import StageContext
from lmforge.trainer.errors import InvalidInput
from lmforge.trainer.precision import trains_on_gpu


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
            raise InvalidInput(
                f"spec.modelRef: {ref_kind}/{ref_name} published no `model` artifact "
                f"(it has: {', '.join(sorted(found.artifacts)) or 'none'})"
            )
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
    return trains_on_gpu(spec.topology.gpus_per_node)


def check_precision(spec: AlignmentJobSpec) -> None:
    """fp16 needs a GPU; say so instead of silently training in another precision."""
    if spec.training.precision is Precision.FP16 and not on_gpu(spec):
        raise InvalidInput("spec.training.precision: fp16 needs a GPU; use bf16 or fp32 on the CPU")


def frozen_in_bf16(spec: AlignmentJobSpec) -> bool:
    """Whether a LoRA base is loaded in bf16 under a bf16 run on the CPU.

    Frozen weights need no fp32 master copy: the trainer's autocast computes in bf16 anyway, and with
    fp32 weights every frozen matmul also keeps a bf16 cast of its weight for the backward pass, so the
    base costs 4 + 2 bytes a weight instead of 2. The LoRA matrices stay fp32 (peft upcasts adapters)
    and a merged output is merged into the base reloaded at its stored precision (`lora.merge_into`).
    """
    return spec.training.precision is Precision.BF16 and spec.adapter.type is AdapterType.LORA and not on_gpu(spec)


def load_model(
    path: Path,
    spec: AlignmentJobSpec,
    *,
    reward_head: bool = False,
    autocast: bool = True,
    stored_precision: bool = False,
) -> Any:
    """The base as a causal LM (or, for a reward model, a one-label sequence classifier), 4-bit
    quantised for QLoRA.

    Trained weights stay at the stored precision (fp32) on the CPU, bf16 coming from the trainer's
    autocast; a frozen LoRA base under bf16 is loaded in bf16 when the caller trains under autocast
    (`frozen_in_bf16`; our PPO loop does not). `stored_precision` loads the weights as saved.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from lmforge.trainer.align.lora import quantization_config

    kwargs: dict[str, Any] = {}
    bf16 = on_gpu(spec) and spec.training.precision is Precision.BF16
    if not stored_precision and (bf16 or (autocast and frozen_in_bf16(spec))):
        kwargs["dtype"] = torch.bfloat16
    quant = quantization_config(spec) if not stored_precision else None
    if quant is not None:
        kwargs["quantization_config"] = quant
    if reward_head:
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, **kwargs)
        head = getattr(model, "score", None)
        if "dtype" in kwargs and not on_gpu(spec) and head is not None:
            head.to(torch.float32)  # the new head trains fully (modules_to_save): fp32 under AdamW
    else:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if model.config.pad_token_id is None and model.config.eos_token_id is not None:
        eos = model.config.eos_token_id
        model.config.pad_token_id = eos[0] if isinstance(eos, list) else eos
    return model
