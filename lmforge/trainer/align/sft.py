"""SFT with trl's SFTTrainer, loss on assistant tokens only.

We tokenize ourselves (see `lmforge.trainer.chat.encode_chat`) and hand trl `input_ids` + `labels`
with prompt positions set to -100, because trl's own assistant mask needs `{% generation %}` markers
that neither our template nor most model templates have. Truncation to `maxLength` happens here too,
so the rows it empties of assistant tokens are counted (`dropped_truncated`) rather than silently
filtered by trl.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lmforge.api.alignment import AlignmentJobSpec
from lmforge.trainer.align.data import Example
from lmforge.trainer.chat import encode_chat

IGNORE = -100
"""Label of positions that carry no loss (PyTorch cross-entropy's ignore_index)."""


@dataclass
class Encoded:
    rows: list[dict[str, list[int]]]
    dropped: int
    """Rows whose assistant tokens all fell beyond `maxLength`."""
    truncated: int
    """Rows cut at `maxLength` but kept."""


def encode(examples: list[Example], tokenizer: Any, template: str, max_length: int, assistant_only: bool) -> Encoded:
    """`{"input_ids", "labels"}` per row, truncated to `max_length` tokens."""
    out = Encoded([], 0, 0)
    for ex in examples:
        ids, mask = encode_chat(tokenizer, ex.prompt, template)
        if len(ids) > max_length:
            out.truncated += 1
            ids, mask = ids[:max_length], mask[:max_length]
        labels = [t if (m or not assistant_only) else IGNORE for t, m in zip(ids, mask, strict=True)]
        if not any(m for m in mask):
            out.dropped += 1
            continue
        out.rows.append({"input_ids": ids, "labels": labels})
    return out


def build_trainer(
    spec: AlignmentJobSpec, model: Any, tokenizer: Any, train: Encoded, val: Encoded | None, args: dict[str, Any]
) -> Any:
    """An SFTTrainer over the pre-tokenized rows."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    config = SFTConfig(
        **args,
        max_length=spec.training.max_length,
        packing=spec.sft.packing,
        completion_only_loss=False,
        assistant_only_loss=False,
        dataset_num_proc=None,
    )
    train_ds = Dataset.from_list(train.rows)
    val_ds = Dataset.from_list(val.rows) if val and val.rows else None
    return SFTTrainer(model=model, args=config, train_dataset=train_ds, eval_dataset=val_ds, processing_class=tokenizer)
