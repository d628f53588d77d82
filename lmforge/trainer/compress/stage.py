"""`python -m lmforge.trainer compress`: the ModelRelease's model, distilled → pruned → quantized as
its spec asks, measured before and after on held-out rows, and published as artifacts `model` (a
Hugging Face directory, compressed-tensors when quantized) and `report` (`report.json`).

With no compression configured the input model is re-published unchanged, so the serve stage always
reads the release's own `model` artifact.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from lmforge.api.release import ModelRelease, PruneMethod, QuantMethod
from lmforge.store import MANIFEST_NAME, open_store, read_manifest
from lmforge.trainer import turns
from lmforge.trainer.artifacts import fetch, publish, split_uri
from lmforge.trainer.compress import distill as distil_mod
from lmforge.trainer.compress import prune, quantize
from lmforge.trainer.compress.calibration import calibration_rows
from lmforge.trainer.compress.report import CompressionReport, dir_size, perplexity
from lmforge.trainer.context import StageContext, StageOutcome
from lmforge.trainer.errors import InvalidInput
from lmforge.trainer.shards import Shards

WEIGHT_FILES = ("*.safetensors", "*.safetensors.index.json", "*.bin", "config.json", "MANIFEST.json")


def model_source(ctx: StageContext, release: ModelRelease) -> tuple[str, list[str], bool]:
    """(URI of the model to release, its lineage, whether it must carry a manifest)."""
    ref = release.spec.model_ref
    if ref.uri is not None:
        return ctx.resolve(ref.uri), [], False
    assert ref.kind is not None and ref.name is not None  # ModelRef's own validation
    found = ctx.input(ref.kind.value, ref.name)
    if "model" not in found.artifacts:
        raise InvalidInput(f"spec.modelRef: {ref.kind.value}/{ref.name} published no `model` artifact")
    return found.artifacts["model"], list(found.lineage), True


def model_metadata(uri: str) -> dict[str, Any]:
    root, leaf = split_uri(uri)
    manifest = read_manifest(open_store(root), leaf)
    return dict(manifest.metadata) if manifest else {}


def copy_side_files(src: Path, dst: Path) -> None:
    """Tokenizer, chat template, generation config: everything of a HF directory but the weights."""
    dst.mkdir(parents=True, exist_ok=True)
    for p in src.iterdir():
        if p.is_file() and not any(p.match(g) for g in WEIGHT_FILES):
            shutil.copy2(p, dst / p.name)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def with_stops(source: Path, out: Path) -> Path:
    """The uncompressed model to publish: `source` itself, or a copy of it (weights hard-linked
    where possible) whose generation config adds the stop tokens of its chat template when the
    source's misses one — an uploaded model's own files are never edited."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError):  # no tokenizer beside the weights: nothing to stop at
        return source
    if not turns.needs_update(source, tokenizer):
        return source
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(source, out, copy_function=_link_or_copy, ignore=shutil.ignore_patterns(MANIFEST_NAME))
    config = out / turns.GENERATION_CONFIG
    config.unlink(missing_ok=True)  # a hard link: writing through it would edit the source's
    if (source / turns.GENERATION_CONFIG).is_file():
        shutil.copy2(source / turns.GENERATION_CONFIG, config)
    turns.write_generation_config(out, tokenizer)
    return out


def run(ctx: StageContext) -> StageOutcome:
    from transformers import AutoModelForCausalLM

    release = ctx.resource
    assert isinstance(release, ModelRelease)
    comp = release.spec.compression
    q, p, d = comp.quantization, comp.pruning, comp.distillation
    uri, lineage, need_manifest = model_source(ctx, release)
    source = fetch(uri, require_manifest=need_manifest)
    meta = model_metadata(uri)
    steps = (
        ([f"distil:{d.student.num_layers}x{d.student.hidden_size}"] if d else [])
        + ([p.method.value] if p.method != PruneMethod.NONE else [])
        + ([q.method.value] if q.method != QuantMethod.NONE else [])
    )
    metadata: dict[str, Any] = {"lineage": [*lineage, uri], "dataset": meta.get("dataset")}
    report = CompressionReport(
        method="+".join(steps) or "none",
        size_before_bytes=dir_size(source),
        size_after_bytes=dir_size(source),
        perplexity_before=None,
        perplexity_after=None,
        max_perplexity_increase=q.max_perplexity_increase,
    )
    out = source
    if steps:
        if q.method != QuantMethod.NONE:
            scheme = quantize.scheme_for(q.method)  # refuse unavailable methods before any work
            report.vllm_cpu, report.vllm_cpu_reason = scheme.vllm_cpu_reason is None, scheme.vllm_cpu_reason
        rows = calibration_rows(ctx, release, meta, source, uri)
        total = len(steps) + 2
        ctx.reporter.progress(0, total, message="scoring the input model", force=True)
        current, done = source, 1
        if d is not None:
            report.perplexity_teacher = perplexity(source, rows)
            dshards = Shards(fetch(ctx.input("Dataset", d.dataset_ref.name).artifacts["shards"]))
            result = distil_mod.distill(
                source,
                d,
                dshards,
                ctx.work_dir / "student",
                on_step=lambda s, loss: ctx.reporter.progress(
                    s, d.max_steps, unit="distill-step", metrics={"loss": loss}
                ),
            )
            report.details["student"] = {
                "parameters": result.parameters,
                "val_nll": result.val_nll,
                "train_loss": result.train_loss,
            }
            current, done = result.student_dir, done + 1
        report.perplexity_before = perplexity(current, rows)
        model = AutoModelForCausalLM.from_pretrained(current, dtype="auto")
        compressor = None
        if p.method != PruneMethod.NONE:
            ctx.reporter.progress(done, total, message=f"pruning ({p.method.value})", force=True)
            report.details["sparsity"] = prune.prune_model(model, p.method, p.sparsity)
            done += 1
        if q.method != QuantMethod.NONE:
            ctx.reporter.progress(done, total, message=f"quantizing ({q.method.value})", force=True)
            compressor = quantize.quantize(model, q.method, q.group_size, rows)
            done += 1
        out = ctx.work_dir / "model"
        shutil.rmtree(out, ignore_errors=True)
        copy_side_files(current, out)
        quantize.save(model, compressor, out)
        turns.write_generation_config(out)
        del model
        ctx.reporter.progress(done, total, message="scoring the compressed model", force=True)
        report.perplexity_after = perplexity(out, rows)
        report.size_after_bytes = dir_size(out)
        report.check()
        write_card(out, release, uri, report)
    else:
        out = with_stops(source, ctx.work_dir / "model")
    report_dir = ctx.work_dir / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "report.json").write_text(json.dumps(report.to_json(), indent=2) + "\n")
    metadata["compression"] = report.to_json()
    artifacts = {
        "model": publish(ctx, "model", out, "model", metadata),
        "report": publish(ctx, "report", report_dir, "report", {}),
    }
    return StageOutcome(artifacts, report.metrics())


def write_card(out: Path, release: ModelRelease, uri: str, report: CompressionReport) -> None:
    """README.md model card: where the model came from and what compression cost."""
    ppl = (
        f"{report.perplexity_before:.3f} → {report.perplexity_after:.3f}"
        if report.perplexity_before is not None and report.perplexity_after is not None
        else "n/a"
    )
    (out / "README.md").write_text(
        f"# {release.metadata.name}\n\nReleased by LMForge from `{uri}`.\n\n"
        f"- compression: `{report.method}`\n- size: {report.size_before_bytes} → {report.size_after_bytes} bytes "
        f"({report.ratio:.2f}×)\n- held-out perplexity: {ppl}\n"
        + (f"- vLLM CPU: not servable ({report.vllm_cpu_reason})\n" if not report.vllm_cpu else "")
    )
