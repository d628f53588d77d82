"""Which tokens end a chat turn: found from the chat template itself (ours, ChatML-style, none) and
written as the `eos_token_id` list of `generation_config.json`, keeping what was there."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lmforge.trainer import turns

pytestmark = pytest.mark.ml

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from support.tiny import make_tokenizer
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(make_tokenizer(tmp_path_factory.mktemp("tok")))


def test_lmforge_template_ends_turns_with_end(tokenizer: Any) -> None:
    end = tokenizer.convert_tokens_to_ids("<|end|>")
    assert turns.end_of_turn_ids(tokenizer) == [end]
    assert turns.stop_token_ids(tokenizer) == [tokenizer.eos_token_id, end]


def test_other_templates(tokenizer: Any) -> None:
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    assert turns.end_of_turn_ids(tokenizer, CHATML) == [tokenizer.convert_tokens_to_ids("<|im_end|>")]
    # a template closing turns with plain text, one that cannot render a chat, and none at all
    assert turns.end_of_turn_ids(tokenizer, "{% for m in messages %}{{ m['content'] }}\n\n{% endfor %}") == []
    assert turns.end_of_turn_ids(tokenizer, "{{ raise_exception('system first') }}") == []
    assert turns.end_of_turn_ids(type("NoTemplate", (), {"chat_template": None})()) == []


def test_generation_config_keeps_existing_entries_and_adds_the_turn_end(tokenizer: Any, tmp_path: Path) -> None:
    end = tokenizer.convert_tokens_to_ids("<|end|>")
    (tmp_path / "config.json").write_text(json.dumps({"bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 2}))
    assert turns.needs_update(tmp_path, tokenizer)
    assert turns.write_generation_config(tmp_path, tokenizer) == [1, end]
    written = json.loads((tmp_path / turns.GENERATION_CONFIG).read_text())
    assert written == {"bos_token_id": 0, "eos_token_id": [1, end], "pad_token_id": 2}
    assert not turns.needs_update(tmp_path, tokenizer)
    (tmp_path / turns.GENERATION_CONFIG).write_text(json.dumps({"eos_token_id": [7, 1], "temperature": 0.6}))
    assert turns.write_generation_config(tmp_path, tokenizer) == [7, 1, end]
    assert json.loads((tmp_path / turns.GENERATION_CONFIG).read_text())["temperature"] == 0.6
