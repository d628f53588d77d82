"""The chat template and assistant masks."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmforge.trainer.chat import DEFAULT_CHAT_TEMPLATE, TemplateError, encode_chat, resolve_template

pytestmark = pytest.mark.ml


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> object:
    from support.tiny import make_tokenizer
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(make_tokenizer(tmp_path_factory.mktemp("tok")))


def test_mask_covers_exactly_the_assistant_turns(tok: object) -> None:
    chat = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "the red cat"},
        {"role": "assistant", "content": "the green dog"},
        {"role": "user", "content": "the old tree"},
        {"role": "assistant", "content": "the cold lamp"},
    ]
    ids, mask = encode_chat(tok, chat, DEFAULT_CHAT_TEMPLATE)
    decoded = tok.decode([t for t, m in zip(ids, mask, strict=True) if m])  # type: ignore[attr-defined]
    assert decoded == "the green dog<|end|>the cold lamp<|end|>"
    prompt = tok.decode([t for t, m in zip(ids, mask, strict=True) if not m])  # type: ignore[attr-defined]
    assert "<|assistant|>" in prompt and "the red cat" in prompt and "dog" not in prompt


def test_template_resolution(tok: object, tmp_path: Path) -> None:
    import copy

    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = copy.deepcopy(tok)
    assert resolve_template(tok, "{{ 'x' }}") == "{{ 'x' }}"
    assert resolve_template(tok) == tok.chat_template  # type: ignore[attr-defined]
    tok.chat_template = None  # type: ignore[attr-defined]
    assert resolve_template(tok) == DEFAULT_CHAT_TEMPLATE  # falls back to ours: the reserved tokens exist
    plain = Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    plain.pre_tokenizer = pre_tokenizers.Whitespace()
    bare = PreTrainedTokenizerFast(tokenizer_object=plain)
    with pytest.raises(TemplateError, match=r"set spec\.chatTemplate"):
        resolve_template(bare)
