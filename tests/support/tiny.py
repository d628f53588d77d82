"""Tiny models and tokenizers that tests make themselves (nothing is downloaded from a hub).

A byte-level BPE trained on a few generated sentences, and a random Llama with head_dim 32 (vLLM's
CPU attention needs ≥ 32), saved in Hugging Face format. Cached per session by the callers.
"""

from __future__ import annotations

import random
from pathlib import Path

SPECIAL_TOKENS = ["<|bos|>", "<|eos|>", "<|pad|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

_NOUNS = ["cat", "dog", "bird", "fish", "tree", "river", "stone", "cloud", "apple", "lamp"]
_VERBS = ["sees", "likes", "finds", "paints", "follows", "hears", "keeps", "moves"]
_ADJS = ["red", "small", "quiet", "bright", "green", "old", "happy", "cold"]


def sentences(n: int, seed: int = 0) -> list[str]:
    """Simple generated sentences with a learnable grammar."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        out.append(
            f"the {rng.choice(_ADJS)} {rng.choice(_NOUNS)} {rng.choice(_VERBS)} "
            f"the {rng.choice(_ADJS)} {rng.choice(_NOUNS)} ."
        )
    return out


def make_tokenizer(out_dir: Path, vocab_size: int = 512, texts: list[str] | None = None) -> Path:
    """Train a byte-level BPE and save it as a Hugging Face tokenizer directory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=1,
    )
    tok.train_from_iterator(texts or sentences(2000), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|eos|>", pad_token="<|pad|>")
    fast.chat_template = CHAT_TEMPLATE
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out_dir)
    return out_dir


def make_model(
    out_dir: Path,
    vocab_size: int = 512,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 2,
    seed: int = 0,
    tokenizer_dir: Path | None = None,
) -> Path:
    """A random LlamaForCausalLM (head_dim = hidden / heads = 32 by default) saved with a tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok_dir = tokenizer_dir or make_tokenizer(out_dir, vocab_size)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tok_dir)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=hidden * 3,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        head_dim=hidden // heads,
        max_position_embeddings=256,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    return out_dir


def assert_stops_at_turn_end(model_dir: Path) -> None:
    """The exported model's generation config stops at EOS and at LMForge's end of turn, `<|end|>`
    (the list form vLLM reads), so a served chat answer ends with its turn."""
    import json

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    config = json.loads((model_dir / "generation_config.json").read_text())
    assert config["eos_token_id"] == [tok.eos_token_id, tok.convert_tokens_to_ids("<|end|>")], config
