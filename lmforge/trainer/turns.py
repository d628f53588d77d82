"""Which tokens end a chat turn, written into every exported model's `generation_config.json`.

vLLM (like transformers' `generate`) stops at the ids in `generation_config.json`'s `eos_token_id`.
A chat template that closes each turn with a token other than the tokenizer's EOS (LMForge's
template ends turns with `<|end|>`, Llama 3 with `<|eot_id|>`, ChatML with `<|im_end|>`) must list
that token there too, or a served model answers and then keeps generating until `max_tokens`. We
write the list form Llama 3 uses (`"eos_token_id": [eos, end_of_turn, …]`).

The end-of-turn token is found by rendering a one-turn chat with the template and taking the first
special token after the assistant's content, so any template works, not only ours. Every exporter
(pretrain, align, compress, distill) calls `write_generation_config` on its output directory; this
module is the one place that knows what ends a turn.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lmforge.trainer.chat import render

GENERATION_CONFIG = "generation_config.json"
_SENTINEL = "lmforge-sentinel-7f3a"
"""Assistant content whose end is searched for in the rendered chat (plain text, never special)."""


def _special_ids(tokenizer: Any) -> set[int]:
    """Ids of the tokenizer's special tokens: the named ones and every added token marked special."""
    ids = {int(i) for i in getattr(tokenizer, "all_special_ids", []) if i is not None}
    for token_id, added in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
        if getattr(added, "special", False):
            ids.add(int(token_id))
    return ids


def end_of_turn_ids(tokenizer: Any, template: str | None = None) -> list[int]:
    """The special token(s) the chat template closes an assistant turn with; [] without a template,
    for a template that fails to render a user/assistant exchange, or one that closes turns with
    plain text only."""
    template = template or getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str) or not template:
        return []
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _SENTINEL}]
    try:
        text = render(tokenizer, chat, template)
    except Exception:  # a template with its own rules (roles, alternation) we cannot satisfy
        return []
    at = text.find(_SENTINEL)
    if at < 0:
        return []
    tail = text[at + len(_SENTINEL) :]
    specials = _special_ids(tokenizer)
    for token_id in tokenizer(tail, add_special_tokens=False)["input_ids"]:
        if int(token_id) in specials:
            return [int(token_id)]
    return []


def stop_token_ids(tokenizer: Any, template: str | None = None) -> list[int]:
    """EOS first, then the end-of-turn token(s), without repeats."""
    eos = getattr(tokenizer, "eos_token_id", None)
    ids = ([int(eos)] if eos is not None else []) + end_of_turn_ids(tokenizer, template)
    return list(dict.fromkeys(ids))


def _as_list(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, list) else [int(value)]


def generation_config(model_dir: Path, tokenizer: Any) -> dict[str, Any]:
    """The directory's generation config (or one built from config.json's BOS/EOS/PAD) with every
    stop token of the tokenizer's chat template in `eos_token_id` (existing entries kept first)."""
    path = model_dir / GENERATION_CONFIG
    if path.is_file():
        config: dict[str, Any] = json.loads(path.read_text())
    else:
        model_config = json.loads((model_dir / "config.json").read_text())
        config = {
            k: model_config[k]
            for k in ("bos_token_id", "eos_token_id", "pad_token_id")
            if model_config.get(k) is not None
        }
    ids = list(dict.fromkeys(_as_list(config.get("eos_token_id")) + stop_token_ids(tokenizer)))
    if ids:
        config["eos_token_id"] = ids
    return config


def write_generation_config(model_dir: Path, tokenizer: Any | None = None) -> list[int]:
    """Write `generation_config.json` into a Hugging Face model directory (its tokenizer is loaded
    from there unless given); returns the `eos_token_id` list written."""
    if tokenizer is None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    config = generation_config(model_dir, tokenizer)
    (model_dir / GENERATION_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return _as_list(config.get("eos_token_id"))


def needs_update(model_dir: Path, tokenizer: Any) -> bool:
    """Whether the directory's generation config misses a stop token of its chat template."""
    path = model_dir / GENERATION_CONFIG
    have = set(_as_list(json.loads(path.read_text()).get("eos_token_id"))) if path.is_file() else set()
    return not set(stop_token_ids(tokenizer)) <= have
