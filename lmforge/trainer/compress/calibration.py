"""The rows compression is measured on (held-out perplexity before and after) and GPTQ/AWQ calibrate
on, as (N, L) token ids. The first source that exists wins:

1. `compression.quantization.calibrationDatasetRef`: that Dataset's validation split;
2. `compression.quantization.calibrationUri`: rows of text or chats, tokenized here;
3. the Dataset the model was pretrained on (its manifest's `dataset.shards`);
4. the rows its AlignmentJob trained on (its manifest's `data`, the job's `spec.data.uri`): the
   model's own chat data, so an external model fine-tuned by LMForge compresses without a Dataset;
5. the distillation Dataset.

Rows that are not shards (2 and 4) are rendered with the model's chat template, tokenized with its
tokenizer, closed with EOS and packed into sequences of `PACK_LENGTH` tokens (fewer for a model with
a shorter context, or for data shorter than one sequence). Training rows are not held out: the
perplexity change still compares like with like, before and after.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lmforge.api.alignment import AlignmentMethod
from lmforge.api.release import ModelRelease
from lmforge.trainer.artifacts import fetch
from lmforge.trainer.context import StageContext
from lmforge.trainer.errors import InvalidInput
from lmforge.trainer.shards import Shards

PACK_LENGTH = 256
"""Tokens per packed calibration sequence."""

CHOICES = (
    "compression.quantization.calibrationDatasetRef (a Dataset), compression.quantization."
    "calibrationUri (JSONL/Parquet rows of text, chat messages or prompt/response), or a model whose "
    "manifest names its training data (a PretrainJob's Dataset or an AlignmentJob's spec.data.uri)"
)


def _row_text(where: str, raw: Any, tokenizer: Any, template: str | None) -> str:
    """One raw row as the text the model sees: `text` as is, a chat rendered with the template."""
    from lmforge.trainer.align.data import BadRow, parse_row
    from lmforge.trainer.chat import render

    if isinstance(raw, dict) and isinstance(raw.get("text"), str) and raw["text"].strip():
        return str(raw["text"])
    if isinstance(raw, dict) and "chosen" in raw:
        method = AlignmentMethod.DPO
    elif isinstance(raw, dict) and ("messages" in raw or "response" in raw):
        method = AlignmentMethod.SFT
    else:
        method = AlignmentMethod.PPO  # a prompt alone
    try:
        example = parse_row(raw, method)
    except BadRow as exc:
        raise InvalidInput(f"calibration rows: {where}: {exc} (expected text, messages or prompt/response)") from None
    chat = example.prompt + ([{"role": "assistant", "content": example.chosen}] if example.chosen else [])
    if template is None:
        return "\n".join(m["content"] for m in chat)
    return render(tokenizer, chat, template)


def pack_rows(uri: str, model_dir: Path, limit: int) -> np.ndarray:
    """Up to `limit` packed sequences (N, L) int64 of the rows under `uri`, in file order."""
    from transformers import AutoConfig, AutoTokenizer

    from lmforge.trainer.align.data import raw_rows
    from lmforge.trainer.chat import TemplateError, resolve_template

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    try:
        template: str | None = resolve_template(tokenizer)
    except TemplateError:
        template = None
    context = getattr(AutoConfig.from_pretrained(model_dir), "max_position_embeddings", None) or PACK_LENGTH
    length = min(PACK_LENGTH, int(context))
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    ids: list[int] = []
    try:
        for where, raw in raw_rows(uri):
            text = _row_text(where, raw, tokenizer, template)
            ids += list(tokenizer(text, add_special_tokens=False)["input_ids"]) + eos
            if len(ids) >= limit * length:
                break
    except OSError as exc:
        raise InvalidInput(f"calibration rows {uri}: unreadable: {exc}") from None
    if len(ids) < 2:
        raise InvalidInput(f"calibration rows {uri}: no tokens to calibrate on")
    length = min(length, len(ids))
    count = min(limit, len(ids) // length)
    return np.asarray(ids[: count * length], dtype=np.int64).reshape(count, length)


def calibration_rows(
    ctx: StageContext, release: ModelRelease, meta: dict[str, Any], model_dir: Path, uri: str
) -> np.ndarray:
    """The (N, L) rows of the first source that exists (see the module docstring); `meta` is the
    model's manifest metadata, `model_dir` its local copy (for the tokenizer), `uri` where it lives."""
    comp = release.spec.compression
    q = comp.quantization
    limit = q.calibration_samples
    if q.calibration_dataset_ref is not None:
        return _shards(ctx.input("Dataset", q.calibration_dataset_ref.name).artifacts.get("shards"), limit)
    if q.calibration_uri is not None:
        return pack_rows(ctx.resolve(q.calibration_uri), model_dir, limit)
    dataset = meta.get("dataset")
    if isinstance(dataset, dict) and isinstance(dataset.get("shards"), str):
        return _shards(dataset["shards"], limit)
    if isinstance(meta.get("data"), str):
        return pack_rows(meta["data"], model_dir, limit)
    if comp.distillation is not None:
        return _shards(ctx.input("Dataset", comp.distillation.dataset_ref.name).artifacts.get("shards"), limit)
    raise InvalidInput(
        f"no calibration data to measure the compression on: set {CHOICES}; the model at {uri} "
        "names no training data in a manifest"
    )


def _shards(uri: str | None, limit: int) -> np.ndarray:
    if uri is None:
        raise InvalidInput("the calibration Dataset published no shards")
    return Shards(fetch(uri)).validation.head(limit)
