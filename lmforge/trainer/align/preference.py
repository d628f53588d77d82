"""Reward-model, DPO/IPO and KTO training on preference data, with trl's RewardTrainer, DPOTrainer and
KTOTrainer.

The reward model is the base with a one-label sequence-classification head, trained on
(prompt + chosen, prompt + rejected) rendered with the chat template; it reports pairwise accuracy on
the held-out split. DPO gets conversational rows (prompt turns, one assistant turn each for chosen and
rejected) so trl applies the same template; rows whose prompt alone fills `maxLength` would be dropped
by trl without a word, so they are counted and removed here first. KTO takes unpaired rows (a prompt,
one answer and whether it was desirable) in the same conversational shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lmforge.api.alignment import AlignmentJobSpec, AlignmentMethod
from lmforge.trainer.align.data import Example
from lmforge.trainer.chat import encode_chat, generation_prompt_ids


@dataclass
class Pairs:
    rows: list[dict[str, Any]]
    dropped: int
    """Pairs with no room left for the answer after `maxLength`."""


def _answer(ex: Example, text: str | None) -> list[dict[str, str]]:
    return [*ex.prompt, {"role": "assistant", "content": str(text)}]


def encode_reward(examples: list[Example], tokenizer: Any, template: str, max_length: int) -> Pairs:
    """`chosen_ids`/`rejected_ids` (whole chats, truncated to `max_length`)."""
    out = Pairs([], 0)
    for ex in examples:
        chosen, _ = encode_chat(tokenizer, _answer(ex, ex.chosen), template)
        rejected, _ = encode_chat(tokenizer, _answer(ex, ex.rejected), template)
        if len(generation_prompt_ids(tokenizer, ex.prompt, template)) >= max_length:
            out.dropped += 1
            continue
        out.rows.append({"chosen_ids": chosen[:max_length], "rejected_ids": rejected[:max_length]})
    return out


def encode_dpo(examples: list[Example], tokenizer: Any, template: str, max_length: int) -> Pairs:
    """Conversational rows for DPOTrainer, less those whose prompt fills `max_length`."""
    out = Pairs([], 0)
    for ex in examples:
        if len(generation_prompt_ids(tokenizer, ex.prompt, template)) >= max_length:
            out.dropped += 1
            continue
        out.rows.append(
            {
                "prompt": ex.prompt,
                "chosen": [{"role": "assistant", "content": ex.chosen}],
                "rejected": [{"role": "assistant", "content": ex.rejected}],
            }
        )
    return out


def encode_kto(examples: list[Example], tokenizer: Any, template: str, max_length: int) -> Pairs:
    """Conversational unpaired rows for KTOTrainer, less those whose prompt fills `max_length`."""
    out = Pairs([], 0)
    for ex in examples:
        if len(generation_prompt_ids(tokenizer, ex.prompt, template)) >= max_length:
            out.dropped += 1
            continue
        out.rows.append(
            {
                "prompt": ex.prompt,
                "completion": [{"role": "assistant", "content": ex.completion}],
                "label": bool(ex.label),
            }
        )
    return out


def build_reward_trainer(
    spec: AlignmentJobSpec, model: Any, tokenizer: Any, train: Pairs, val: Pairs | None, args: dict[str, Any]
) -> Any:
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    config = RewardConfig(**args, max_length=spec.training.max_length, dataset_num_proc=None)
    val_ds = Dataset.from_list(val.rows) if val and val.rows else None
    return RewardTrainer(
        model=model,
        args=config,
        train_dataset=Dataset.from_list(train.rows),
        eval_dataset=val_ds,
        processing_class=tokenizer,
    )


def build_dpo_trainer(
    spec: AlignmentJobSpec, model: Any, tokenizer: Any, train: Pairs, val: Pairs | None, args: dict[str, Any]
) -> Any:
    """DPOTrainer; with LoRA the reference is the base with adapters disabled (no second copy)."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    loss = "ipo" if spec.method is AlignmentMethod.IPO else "sigmoid"
    config = DPOConfig(
        **args, beta=spec.preference.beta, loss_type=[loss], max_length=spec.training.max_length, dataset_num_proc=None
    )
    val_ds = Dataset.from_list(val.rows) if val and val.rows else None
    return DPOTrainer(
        model=model,
        args=config,
        train_dataset=Dataset.from_list(train.rows),
        eval_dataset=val_ds,
        processing_class=tokenizer,
    )


def build_kto_trainer(
    spec: AlignmentJobSpec, model: Any, tokenizer: Any, train: Pairs, val: Pairs | None, args: dict[str, Any]
) -> Any:
    """KTOTrainer; with LoRA the reference is the base with adapters disabled (no second copy)."""
    from datasets import Dataset
    from trl import KTOConfig, KTOTrainer

    kto = spec.kto
    config = KTOConfig(
        **args,
        beta=kto.beta,
        desirable_weight=kto.desirable_weight,
        undesirable_weight=kto.undesirable_weight,
        max_length=spec.training.max_length,
        dataset_num_proc=None,
    )
    val_ds = Dataset.from_list(val.rows) if val and val.rows else None
    return KTOTrainer(
        model=model,
        args=config,
        train_dataset=Dataset.from_list(train.rows),
        eval_dataset=val_ds,
        processing_class=tokenizer,
    )
