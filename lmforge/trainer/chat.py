"""LMForge's default chat template and the helpers that turn chats into token ids with a loss mask.

The Dataset stage reserves `<|system|>`, `<|user|>`, `<|assistant|>` and `<|end|>` in every tokenizer it
trains; the default template below frames each turn with them. A base model that brings its own template
(e.g. an uploaded Llama) keeps it. Assistant-only loss needs to know which tokens each assistant turn
produced; rather than requiring `{% generation %}` markers in the template (which most templates lack),
we render growing prefixes of the chat and map the assistant's character spans onto token offsets, so
any template whose rendering of a prefix is a prefix of the full rendering works.
"""

from __future__ import annotations

from typing import Any

ROLES = ("system", "user", "assistant")
"""The roles a chat row may use."""

RESERVED_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
"""Special tokens the default template relies on (reserved by the Dataset stage's tokenizer)."""

DEFAULT_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
"""LMForge's template: `<|role|>content<|end|>` per turn, `<|assistant|>` as the generation prompt."""

Message = dict[str, str]


class TemplateError(ValueError):
    """No usable chat template, or one that renders a chat's prefix inconsistently."""


def resolve_template(tokenizer: Any, override: str | None = None) -> str:
    """The template to train with: the spec's, else the tokenizer's, else ours if its tokens exist."""
    if override:
        return override
    own = getattr(tokenizer, "chat_template", None)
    if isinstance(own, str) and own:
        return own
    vocab = tokenizer.get_vocab()
    missing = [t for t in RESERVED_TOKENS if t not in vocab]
    if missing:
        raise TemplateError(
            "the base model's tokenizer has no chat template and lacks LMForge's reserved tokens "
            f"{', '.join(missing)}: set spec.chatTemplate"
        )
    return DEFAULT_CHAT_TEMPLATE


def render(tokenizer: Any, messages: list[Message], template: str, *, generation_prompt: bool = False) -> str:
    """The chat as text (special tokens included, not tokenized)."""
    text = tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=False, add_generation_prompt=generation_prompt
    )
    return str(text)


def assistant_spans(tokenizer: Any, messages: list[Message], template: str) -> tuple[str, list[tuple[int, int]]]:
    """The rendered chat and the [start, end) character spans produced by each assistant turn (its
    content and closing tokens, not the generation prompt that opens it)."""
    full = render(tokenizer, messages, template)
    spans: list[tuple[int, int]] = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render(tokenizer, messages[:i], template, generation_prompt=True) if i else ""
        through = render(tokenizer, messages[: i + 1], template)
        if not through.startswith(before) or not full.startswith(through):
            raise TemplateError(
                "the chat template does not render a chat's prefix as a prefix of the whole chat, "
                "so assistant tokens cannot be located; use a prefix-consistent template"
            )
        spans.append((len(before), len(through)))
    return full, spans


def encode_chat(tokenizer: Any, messages: list[Message], template: str) -> tuple[list[int], list[int]]:
    """Token ids of the chat and a mask that is 1 on tokens produced by assistant turns.

    A token counts as the assistant's when its character span starts inside an assistant span; the
    template's own special tokens are added by the text, so `add_special_tokens=False`.
    """
    text, spans = assistant_spans(tokenizer, messages, template)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = list(enc["input_ids"])
    mask = [0] * len(ids)
    for k, (start, end) in enumerate(enc["offset_mapping"]):
        if end > start and any(a <= start < b for a, b in spans):
            mask[k] = 1
    return ids, mask


def generation_prompt_ids(tokenizer: Any, messages: list[Message], template: str) -> list[int]:
    """Token ids of a chat ending with the assistant's generation prompt (for rollouts)."""
    text = render(tokenizer, messages, template, generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])
