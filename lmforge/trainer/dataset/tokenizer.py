"""The tokenizer: a byte-level BPE trained with Hugging Face `tokenizers` on the curated corpus, or an
existing `tokenizer.json`/tokenizer directory, saved in Hugging Face format (`tokenizer.json` plus
`tokenizer_config.json` with BOS/EOS/PAD and the chat template) so transformers and vLLM load it.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lmforge.api.dataset import Tokenizer as TokenizerSpec
from lmforge.trainer.chat import DEFAULT_CHAT_TEMPLATE
from lmforge.trainer.errors import InvalidInput

CHAT_TEMPLATE = DEFAULT_CHAT_TEMPLATE
"""Chat template over the role tokens (`<|system|>`, `<|user|>`, `<|assistant|>`, `<|end|>`): LMForge's
one template, defined in `lmforge.trainer.chat`."""


def train(texts: Iterable[str], spec: TokenizerSpec, out_dir: Path) -> Path:
    """Train a byte-level BPE of `spec.vocab_size` on `texts` and save it into `out_dir`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        min_frequency=spec.min_frequency,
        special_tokens=spec.special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return save(tok, spec.special_tokens, out_dir)


def save(tok: Any, special_tokens: list[str], out_dir: Path) -> Path:
    """Save a `tokenizers.Tokenizer` as a Hugging Face tokenizer directory (BOS/EOS/PAD are the first
    three special tokens)."""
    from transformers import PreTrainedTokenizerFast

    bos, eos, pad = special_tokens[:3]
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad, additional_special_tokens=special_tokens[3:]
    )
    fast.chat_template = CHAT_TEMPLATE
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out_dir)
    # transformers 5 writes the template to chat_template.jinja; older readers (and the contract) look
    # for it in tokenizer_config.json too.
    config_path = out_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = CHAT_TEMPLATE
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    return out_dir


def load_existing(location: Path, spec: TokenizerSpec, out_dir: Path) -> Path:
    """Copy an existing tokenizer (a `tokenizer.json`, or a directory holding one) into `out_dir` as a
    Hugging Face directory; special tokens missing from it are added."""
    from tokenizers import Tokenizer

    path = location / "tokenizer.json" if location.is_dir() else location
    if not path.is_file():
        raise InvalidInput(f"tokenizer.fromUri: {location}: no tokenizer.json there")
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as exc:
        raise InvalidInput(f"tokenizer.fromUri: {path}: not a tokenizers file: {exc}") from None
    if location.is_dir() and (location / "tokenizer_config.json").is_file():
        out_dir.mkdir(parents=True, exist_ok=True)
        for f in location.iterdir():
            if f.is_file() and f.name != "MANIFEST.json":
                shutil.copy2(f, out_dir / f.name)
        config = json.loads((out_dir / "tokenizer_config.json").read_text())
        if config.get("eos_token") is None:
            raise InvalidInput(f"tokenizer.fromUri: {location}: tokenizer_config.json has no eos_token")
        return out_dir
    tok.add_special_tokens(spec.special_tokens)
    return save(tok, spec.special_tokens, out_dir)


def special_ids(tok_dir: Path) -> dict[str, int]:
    """BOS/EOS/PAD ids and the vocabulary size of a saved tokenizer directory."""
    from tokenizers import Tokenizer

    config = json.loads((tok_dir / "tokenizer_config.json").read_text())
    tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))

    def token_id(name: str) -> int:
        value = config.get(name)
        content = value.get("content") if isinstance(value, dict) else value
        found = tok.token_to_id(content) if content else None
        return int(found) if found is not None else -1

    ids = {"bos_id": token_id("bos_token"), "eos_id": token_id("eos_token"), "pad_id": token_id("pad_token")}
    ids["vocab_size"] = int(tok.get_vocab_size(with_added_tokens=True))
    if ids["eos_id"] < 0:
        raise InvalidInput(f"tokenizer at {tok_dir} has no EOS token")
    return ids
